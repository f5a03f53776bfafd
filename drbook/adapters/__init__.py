"""Adapters: the only place library exceptions (azure-core, pyVmomi, paramiko, pywinrm) are
caught; each module translates them into drbook.errors with a table."""
