// Wrapper module that pins the istio.io/api release whose
// kubernetes/customresourcedefinitions.gen.yaml is installed into the test control plane.
module previewbot.local/controlplane-build/istio-crds

go 1.24.0

require istio.io/api v1.28.0
