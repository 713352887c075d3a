"""The GPU fleet: GPU workers on any number of machines, fed through the cluster's PostgreSQL."""
