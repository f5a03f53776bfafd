"""Replication: the process server's side of DESIGN.md section 2 (agent -> process server
-> Azure Blob).

    engine        ReplicationEngine: cycles (one item or a barrier-frozen group),
                  enable_replication, verify_point, recover, apply_retention
    cycle         receiving the agent's stream into segments and manifests, the commit
                  marker, page-write planning
    protocol      the agent's wire format, mirrored (drbook/agent/agent.py defines it)
    manifest      SHA-256 per 64 KiB block (+ the 4 KiB sub-block map)
    segments      zstd + AES-256-GCM cache segments
    vhd           the fixed-VHD footer
    blobs, store  replica/cache blobs; points and manifests in the vault
    consistency   what a read may honestly be called (crash / app / inconsistent)
    retention     decide_retention (pure) + apply_retention (I/O, dry-run)
    rpo, events   RPO decisions (pure) and their Prefect events
    local_shell   a RemoteShell on this host, for tests and benchmarks
"""
