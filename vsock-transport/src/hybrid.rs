//! Hybrid vsock over Unix sockets (placeholder, being written).
