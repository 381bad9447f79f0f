// Wrapper module used only to build kwok (fake nodes and pods) at a pinned release.
module previewbot.local/controlplane-build/kwok

go 1.26.0

require sigs.k8s.io/kwok v0.8.0
