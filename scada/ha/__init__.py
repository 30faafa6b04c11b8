"""Redundant server pair (issue 22): role and fencing (:mod:`.role`), the etcd lease that
decides the role, replication of the active's state to the standby. See docs/redundancy.md."""
