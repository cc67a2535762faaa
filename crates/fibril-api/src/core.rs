//! [`Resource`](crate::Resource) for the core Kubernetes kinds Fibril uses,
//! backed by the k8s-openapi types (re-exported here).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
pub use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Service};
pub use k8s_openapi::api::discovery::v1::EndpointSlice;
pub use k8s_openapi::api::networking::v1::NetworkPolicy;

macro_rules! core_resource {
    ($($ty:ty => $ns:expr),* $(,)?) => {$(
        impl crate::Resource for $ty {
            const API_VERSION: &'static str = <$ty as k8s_openapi::Resource>::API_VERSION;
            const KIND: &'static str = <$ty as k8s_openapi::Resource>::KIND;
            const NAMESPACED: bool = $ns;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    )*};
}

core_resource!(
    Namespace => false,
    Node => false,
    Pod => true,
    Deployment => true,
    DaemonSet => true,
    Service => true,
    EndpointSlice => true,
    ConfigMap => true,
    NetworkPolicy => true,
    Event => true,
);
