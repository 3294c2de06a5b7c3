//! kasmina-conformance: not implemented yet (see the project's issues).
