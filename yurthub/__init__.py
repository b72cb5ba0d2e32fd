"""yurthub: the edge node's caching proxy between node components and the cloud kube-apiserver."""
