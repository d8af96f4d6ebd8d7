"""An example third-party Trustflow plugin: in-memory object storage for ``mem://`` URIs."""
