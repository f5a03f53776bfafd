// vcsim for the drbook lab: govmomi's vSphere simulator serving HTTPS with the lab's
// certificate. Built in GOPATH mode against Debian's golang-github-vmware-govmomi-dev.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8989", "host:port to serve the SDK on")
	cert := flag.String("cert", "", "PEM certificate chain")
	key := flag.String("key", "", "PEM private key")
	user := flag.String("username", "", "login user")
	password := flag.String("password", "", "login password (read from this file)")
	clusters := flag.Int("cluster", 1, "clusters per datacenter")
	hosts := flag.Int("host", 1, "standalone hosts per datacenter")
	clusterHosts := flag.Int("cluster-host", 2, "hosts per cluster")
	machines := flag.Int("vm", 0, "extra simulator VMs to create per host/cluster (benchmarks)")
	flag.Parse()

	pw, err := os.ReadFile(*password)
	if err != nil {
		log.Fatalf("vcsim: cannot read password file: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("vcsim: cannot load certificate: %v", err)
	}

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = *clusters
	model.Host = *hosts
	model.ClusterHost = *clusterHosts
	model.Machine = *machines
	model.Autostart = false
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: cannot create model: %v", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, string(pw))}
	server := model.Service.NewServer()
	fmt.Printf("vcsim listening on %s\n", server.URL.Host)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	server.Close()
	model.Remove()
}
