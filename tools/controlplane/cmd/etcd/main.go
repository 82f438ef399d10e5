// Command etcd is upstream etcd's server main, built at exactly the etcd
// version k8s.io/kubernetes itself requires (see ../../go.mod).
//
// `go install go.etcd.io/etcd/server/v3@vX` cannot work: etcd's server/go.mod
// carries monorepo replace directives, so we wrap etcdmain.Main in our own
// module instead (this is all upstream's server/main.go does too).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
