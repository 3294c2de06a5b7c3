//! kasmina-wgpu: not implemented yet (see the project's issues).
