"""Replication: the process server's side of DESIGN.md section 2 (agent -> process server
-> Azure Blob).

    engine        ReplicationEngine, the facade: cycles (one item or a barrier-frozen
                  group), enable_replication, verify_point, recover, apply_retention
    staging       a cycle up to its commit marker: prepare, stage into the cache, abandon
    agents        the agents of a cycle: threads, the group barrier, the idle watchdog
    apply         a cycle after its commit marker: apply, snapshot, record, clean up
    recovery      crashed cycles: replay, discard, or roll back a locally staged one
    storage       the vault, cache and replica handles a cycle's steps take
    enable        registering a protected item; group membership (checked first)
    verify        a disk read back against its manifest (replica snapshots, managed disks)
    cycle         receiving the agent's stream into segments and manifests, the commit
                  marker, page-write planning, CycleSettings (from the site config)
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
