//! Network namespaces and rtnetlink helpers: links, addresses, routes inside a given netns.
