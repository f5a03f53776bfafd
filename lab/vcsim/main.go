// vcsim for the drbook lab: govmomi's vSphere simulator serving HTTPS with the lab's
// certificate. Built in GOPATH mode against Debian's golang-github-vmware-govmomi-dev.
//
// Two additions to the stock simulator, both about what a guest with open-vm-tools
// reports to a real vCenter:
//   - VMware Tools follow the power state (the stock simulator leaves every VM at
//     toolsNotInstalled): running when the VM is on, not running when it is off. A VM
//     whose extraConfig has drbook.lab.tools=none models a guest without tools.
//   - -vm-running powers the model's own VMs (-vm N) on and gives each a guest IP, so a
//     benchmark inventory looks like a live estate rather than a powered-off one.
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
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// toolsModel is a registry handler: the registry calls UpdateObject after every property
// change, so a power-state change can update the guest's tools state in the same step.
type toolsModel struct{}

func (toolsModel) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "DrbookToolsModel", Value: "drbook-tools"}
}

func (toolsModel) PutObject(mo.Reference) {}

func (toolsModel) RemoveObject(types.ManagedObjectReference) {}

func (toolsModel) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok || vm.Guest == nil || vm.Config == nil {
		return
	}
	for _, c := range changes {
		if c.Name != "runtime.powerState" {
			continue
		}
		if !hasTools(vm) {
			return
		}
		status := types.VirtualMachineToolsStatusToolsNotRunning
		running := string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)
		guestState := "notRunning"
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			status = types.VirtualMachineToolsStatusToolsOk
			running = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
			guestState = "running"
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.toolsStatus", Val: status},
			{Name: "guest.toolsRunningStatus", Val: running},
			{Name: "guest.toolsVersionStatus2", Val: string(types.VirtualMachineToolsVersionStatusGuestToolsUnmanaged)},
			{Name: "guest.toolsVersion", Val: "12352"},
			{Name: "guest.guestState", Val: guestState},
			{Name: "summary.guest.toolsStatus", Val: status},
		})
		return
	}
}

func hasTools(vm *mo.VirtualMachine) bool {
	for _, o := range vm.Config.ExtraConfig {
		v := o.GetOptionValue()
		if v.Key == "drbook.lab.tools" && fmt.Sprint(v.Value) == "none" {
			return false
		}
	}
	return true
}

// startModelVMs powers the model's VMs on and gives each NIC a guest IP (10.200.x.y).
func startModelVMs() {
	n := 0
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := simulator.Map.Get(e.Reference()).(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		n++
		ip := fmt.Sprintf("10.200.%d.%d", n/250, n%250+1)
		net := vm.Guest.Net
		if len(net) > 0 {
			net[0].IpAddress = []string{ip}
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.ipAddress", Val: ip},
			{Name: "guest.net", Val: net},
			{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOn},
			{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOn},
			{Name: "summary.runtime.bootTime", Val: time.Now()},
		})
	}
}

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
	running := flag.Bool("vm-running", false, "power the -vm machines on and give them guest IPs")
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
	// The registry exists only once the model is created; the handler goes in after it.
	simulator.Map.AddHandler(toolsModel{})
	if *running {
		startModelVMs()
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
