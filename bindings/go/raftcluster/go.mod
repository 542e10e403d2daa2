module keel/raftcluster

go 1.26

require (
	github.com/anishathalye/porcupine v1.3.1
	go.etcd.io/raft/v3 v3.7.0
	google.golang.org/protobuf v1.36.11
	keel v0.0.0
)

replace keel => ../
