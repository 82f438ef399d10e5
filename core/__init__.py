"""Pure logic shared by the proxy and the operator: no HTTP server, no Kubernetes."""
