//! `fibril controller`: the lab's control plane (Deployments/DaemonSets ->
//! Pods, scheduling, Service IP/port allocation, EndpointSlices) over the
//! cluster store; see the `fibril_controller` crate.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::store::{runtime, shutdown_signal, StoreArgs};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The lab's control plane (one per cluster): plays kube-controller-manager, \
kube-scheduler and the apiserver's allocators over the cluster store.\n\n\
- namespaces default and kube-system exist\n\
- Deployments -> Pods <deploy>-<pod-template-hash>-<5>, scaling, rolling restart (maxSurge 1)\n\
- DaemonSets -> one Pod <ds>-<5> per node matching the nodeSelector\n\
- scheduling: Ready nodes, nodeSelector, required pod anti-affinity, fewest pods\n\
- Services: clusterIP from k8sServiceCIDR, nodePort 30000-32767, LoadBalancer IP from \
loadBalancerIPPool (both read from kube-system/fibril-config; defaults 10.96.0.0/16, no pool)\n\
- EndpointSlices <svc>-<5> for Services with a selector\n\n\
Pods are deleted per the lab's deletion contract (deletionTimestamp when bound)."
)]
pub struct ControllerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Time between reconcile passes, in milliseconds.
    #[arg(long = "interval-ms", value_name = "MS", default_value_t = 300)]
    interval_ms: u64,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let opts = fibril_controller::ControllerOptions {
        interval: Duration::from_millis(args.interval_ms.max(10)),
        ..Default::default()
    };
    runtime()?.block_on(async {
        let store = args.store.require("the controller").await?;
        tracing::info!(etcd = %args.store.etcd.join(","), "controller starting");
        fibril_controller::run_with(store, opts, shutdown_signal())
            .await
            .context("controller")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
