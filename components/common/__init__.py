"""Code shared by the components: errors, artifact manifests, atomic outputs, image tags."""
