//! The kasmina facade.
