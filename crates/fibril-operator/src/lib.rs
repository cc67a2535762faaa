//! Fibril operator (work in progress).
