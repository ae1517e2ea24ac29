"""Model artifacts: the manifest format, the network definitions shared by
training and serving, and the adapters that implement `scorers.ports.Model`."""
