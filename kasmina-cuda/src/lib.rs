//! kasmina-cuda: not implemented yet (see the project's issues).
