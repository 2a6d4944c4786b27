//! AF_VSOCK (placeholder, being written).
