// Test tooling (never product code): the pod sandbox image of the assembled kind node
// (scripts/kind-node-image.sh). `tools/gobuild.sh pause`.
module pipeq.dev/tools/pause

go 1.26.0

tool pipeq.dev/tools/pause
