"""Scale-out: a gateway serving the OpenAI API over replicas (local processes), routed by a latency
target and the cached prefix, with failover that resumes a started stream on another replica."""
