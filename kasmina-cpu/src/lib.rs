//! kasmina-cpu: not implemented yet (see the project's issues).
