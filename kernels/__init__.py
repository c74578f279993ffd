"""GPU kernels (Triton), each beside a `ref_*` torch reference. Imports only torch and triton."""
