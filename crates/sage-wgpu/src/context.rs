//! The long-lived objects: one adapter, its device and queue, built once per backend.

use std::sync::{Arc, Mutex};

use sage_core::{Error, Result};

use crate::NAME;

/// What `sage info` shows of an adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

fn summary(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    }
}

fn instance() -> wgpu::Instance {
    // Honours WGPU_BACKEND and the other WGPU_* variables.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu finds here.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(|a| summary(&a.get_info()))
        .collect()
}

/// Hardware first; among equals, the order wgpu lists them in.
fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The device sage computes on.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Timestamp queries inside compute passes are available (GPU timing for benchmarks).
    pub timestamps: bool,
    /// Set by the device-lost callback; every call checks it first.
    pub lost: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Opens the adapter `SAGE_WGPU_ADAPTER` names (a substring of its name, any case), else the most
    /// capable one, and a device with all the limits it offers.
    pub fn open() -> Result<Gpu> {
        let unavailable = |reason: String| Error::Unavailable {
            backend: NAME,
            reason,
        };
        let instance = instance();
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(unavailable(
                "no wgpu adapter found (no Vulkan, Metal or DX12 driver; on Debian `apt-get install mesa-vulkan-drivers` gives a software one)".into(),
            ));
        }
        if let Ok(want) = std::env::var("SAGE_WGPU_ADAPTER") {
            let want_lc = want.to_lowercase();
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want_lc));
            if adapters.is_empty() {
                return Err(unavailable(format!(
                    "SAGE_WGPU_ADAPTER={want} matches none of the adapters: {}",
                    names.join(", ")
                )));
            }
        }
        adapters.sort_by_key(|a| preference(a.get_info().device_type));
        let adapter = adapters.remove(0);
        let info = adapter.get_info();
        let features = adapter.features();
        let timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY)
            && features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);
        let mut required_features = wgpu::Features::empty();
        if timestamps {
            required_features |=
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sage"),
            required_features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| unavailable(format!("adapter {} refused a device: {e}", info.name)))?;
        let lost = Arc::new(Mutex::new(None));
        let flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = flag.lock() {
                *slot = Some(format!("{reason:?}: {message}"));
            }
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            timestamps,
            lost,
        })
    }

    /// The adapter's name, backend and kind, as capabilities report the device.
    pub fn describe(&self) -> String {
        let s = summary(&self.info);
        format!("{} ({}, {})", s.name, s.backend, s.device_type)
    }

    pub fn is_hardware(&self) -> bool {
        self.info.device_type != wgpu::DeviceType::Cpu
    }

    /// An error when the device has been lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|g| g.clone()) {
            Some(reason) => Err(Error::DeviceLost {
                backend: NAME,
                reason,
            }),
            None => Ok(()),
        }
    }
}
