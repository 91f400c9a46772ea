//! Images built on this machine with no registry: a build context (a Dockerfile plus files)
//! packed as a tar and sent to the engine's classic builder, and the tiny sandbox ("pause")
//! image Capstan builds for itself from a program it ships as bytes.

use crate::DockerError;
use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use futures::StreamExt;

/// One file of a build context.
#[derive(Debug, Clone)]
pub struct ContextFile {
    /// Path inside the context.
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Unix mode (e.g. `0o755`).
    pub mode: u32,
}

fn context_tar(dockerfile: &str, files: &[ContextFile]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, content: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content)
            .map_err(|e| DockerError::Image(format!("packing {path}: {e}")))
    };
    add("Dockerfile", dockerfile.as_bytes(), 0o644)?;
    for file in files {
        add(&file.path, &file.content, file.mode)?;
    }
    builder
        .into_inner()
        .map_err(|e| DockerError::Image(format!("packing the build context: {e}")))
}

/// Builds `tag` from `dockerfile` and `files` with the engine's classic builder (no registry
/// needed for `FROM scratch`).
pub async fn build_image(
    docker: &Docker,
    tag: &str,
    dockerfile: &str,
    files: &[ContextFile],
) -> Result<(), DockerError> {
    let context = context_tar(dockerfile, files)?;
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut progress = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| DockerError::Image(format!("building {tag}: {e}")))?;
        if let Some(error) = step.error_detail.and_then(|d| d.message) {
            return Err(DockerError::Image(format!("building {tag}: {error}")));
        }
    }
    Ok(())
}

/// Builds `tag`, a busybox image `FROM scratch`, from a static busybox binary on this machine
/// (Debian's `busybox-static` installs one at `/bin/busybox`).
pub async fn build_busybox_image(
    docker: &Docker,
    tag: &str,
    busybox: &std::path::Path,
) -> Result<(), DockerError> {
    let content = std::fs::read(busybox)
        .map_err(|e| DockerError::Image(format!("reading {}: {e}", busybox.display())))?;
    build_image(
        docker,
        tag,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        &[ContextFile {
            path: "busybox".into(),
            content,
            mode: 0o755,
        }],
    )
    .await
}

/// A static x86-64 Linux program of 129 bytes that calls `pause(2)` forever: one ELF header,
/// one loadable segment, and `mov eax, 34; syscall; jmp back`. It holds a sandbox's namespaces
/// and is stopped with SIGKILL.
pub fn pause_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let code: [u8; 9] = [0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7];
    let total = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(total as usize);
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers offset
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    // Program header: one PT_LOAD, read + execute, covering the whole file.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    elf
}

/// Builds the sandbox image `tag` from [`pause_program`].
pub async fn build_sandbox_image(docker: &Docker, tag: &str) -> Result<(), DockerError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(DockerError::Image(format!(
            "no built-in sandbox program for {}; pass a sandbox image that is present locally",
            std::env::consts::ARCH
        )));
    }
    build_image(
        docker,
        tag,
        "FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n",
        &[ContextFile {
            path: "pause".into(),
            content: pause_program(),
            mode: 0o755,
        }],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_program_is_a_well_formed_elf() {
        let elf = pause_program();
        assert_eq!(elf.len(), 129);
        assert_eq!(&elf[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, 0x40_0078);
        let filesz = u64::from_le_bytes(elf[64 + 32..64 + 40].try_into().unwrap());
        assert_eq!(filesz, 129);
    }

    #[test]
    fn contexts_hold_the_dockerfile_and_files() {
        let tar = context_tar(
            "FROM scratch\n",
            &[ContextFile {
                path: "bin/tool".into(),
                content: b"#!".to_vec(),
                mode: 0o755,
            }],
        )
        .unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "bin/tool"]);
    }
}
