"""The control plane: owns the generated policy files and publishes them."""
