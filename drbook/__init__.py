"""drbook: disaster recovery of on-premises VMware VMs and physical servers to Azure."""

__version__ = "0.1.0"
