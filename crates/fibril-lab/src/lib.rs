//! The lab: topology files, the netns fabric builder, and (later) the lab cluster.
