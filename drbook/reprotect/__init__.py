"""Reprotect and failback: the failed-over Azure VMs' disks replicated back to on-premises
targets (DESIGN.md §1; the route and its reasons: docs/design-reprotect.md)."""
