//! The ContentAddressableStorage: blobs named by their SHA-256 digest, and the `Directory` and
//! `Tree` messages that describe file trees in it.
//!
//! Small blobs travel in batches, large ones through ByteStream in chunks. Every blob read is
//! hashed and compared with the digest it was asked for before anything uses it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::{
    ReadRequest, WriteRequest, byte_stream_client::ByteStreamClient,
};
use prost::Message;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use sha2::{Digest as _, Sha256};

use super::{Remote, RemoteError};
use crate::hash::hex;
use crate::store::StoreError;
use crate::walk;

/// Blobs up to this size travel in batches; larger ones through ByteStream.
const BATCH_BLOB: usize = 1 << 20;
/// The most bytes in one batch request, well under gRPC's default 4 MiB message limit.
const BATCH_BYTES: usize = 3 << 20;
/// ByteStream chunk size.
const CHUNK: usize = 1 << 20;

/// The digest of some bytes.
pub fn digest_of(bytes: &[u8]) -> re::Digest {
    re::Digest {
        hash: hex(&Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
    }
}

/// The digest of a message's encoding, with the encoding.
pub fn encode(message: &impl Message) -> (re::Digest, Vec<u8>) {
    let bytes = message.encode_to_vec();
    (digest_of(&bytes), bytes)
}

/// The digest of a file's content.
pub fn digest_file(path: &Path) -> io::Result<re::Digest> {
    digest_reader(File::open(path)?)
}

fn digest_reader(mut file: File) -> io::Result<re::Digest> {
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok(re::Digest {
        hash: hex(&hasher.finalize()),
        size_bytes: size as i64,
    })
}

/// `hash/size`, as REAPI tools print digests.
pub fn show(digest: &re::Digest) -> String {
    format!("{}/{}", digest.hash, digest.size_bytes)
}

fn io_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> RemoteError + 'p {
    move |e| RemoteError::Store(StoreError::io(what, path)(e))
}

/// Where an upload's blob comes from.
#[derive(Debug)]
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Blobs to put in the CAS, each once.
#[derive(Debug, Default)]
pub struct Upload {
    blobs: BTreeMap<String, (re::Digest, Source)>,
}

impl Upload {
    /// Adds a message's encoding; returns its digest.
    pub fn add_message(&mut self, message: &impl Message) -> re::Digest {
        let (digest, bytes) = encode(message);
        self.add_bytes(digest.clone(), bytes);
        digest
    }

    /// Adds a blob; returns its digest.
    pub fn add_blob(&mut self, bytes: Vec<u8>) -> re::Digest {
        let digest = digest_of(&bytes);
        self.add_bytes(digest.clone(), bytes);
        digest
    }

    fn add_bytes(&mut self, digest: re::Digest, bytes: Vec<u8>) {
        self.blobs
            .entry(digest.hash.clone())
            .or_insert((digest, Source::Bytes(bytes)));
    }

    fn add_file(&mut self, digest: re::Digest, path: PathBuf) {
        self.blobs
            .entry(digest.hash.clone())
            .or_insert((digest, Source::File(path)));
    }

    /// Packs the file, directory or symlink at `path` (not followed), adding its files and
    /// directories; directories below it go to `children` as well, for a `Tree`. The walk is
    /// iterative and descriptor-relative, as for every tree a build wrote.
    pub fn add_path(
        &mut self,
        path: &Path,
        children: &mut Vec<re::Directory>,
    ) -> Result<Packed, RemoteError> {
        walk::walk(
            path,
            &mut Pack {
                upload: self,
                children,
            },
            walk::Options::default(),
        )
    }
}

/// Packing as a walk: files hashed through their descriptors, each directory's message made
/// from its entries' on the way out.
struct Pack<'u> {
    upload: &'u mut Upload,
    children: &'u mut Vec<re::Directory>,
}

impl From<walk::WalkError> for RemoteError {
    fn from(failure: walk::WalkError) -> Self {
        RemoteError::Store(StoreError::from(failure))
    }
}

impl walk::Visitor for Pack<'_> {
    type Out = Packed;
    type Error = RemoteError;

    fn leaf(&mut self, at: &walk::At<'_>, kind: walk::Kind) -> Result<Packed, RemoteError> {
        let path = at.path();
        match kind {
            walk::Kind::Symlink => {
                let target =
                    String::from_utf8(at.read_link()?).map_err(|_| unusable_name(&path))?;
                Ok(Packed::Symlink(target))
            }
            walk::Kind::File => {
                let Ok((fd, st)) = at.open_file()? else {
                    return Err(io_error("cannot read", &path)(io::Error::other(
                        "it changed while it was being read",
                    )));
                };
                let digest =
                    digest_reader(File::from(fd)).map_err(io_error("cannot read", &path))?;
                self.upload.add_file(digest.clone(), path);
                Ok(Packed::File {
                    digest,
                    executable: st.st_mode & 0o100 != 0,
                })
            }
            other => Err(RemoteError::Store(StoreError::Hash(
                crate::hash::HashError::SpecialFile {
                    path,
                    kind: other.special_name(),
                },
            ))),
        }
    }

    fn leave(
        &mut self,
        at: &walk::At<'_>,
        _: std::os::fd::BorrowedFd<'_>,
        entries: Vec<(std::ffi::CString, Packed)>,
    ) -> Result<Packed, RemoteError> {
        // REAPI directories list their entries sorted by name; the walk gives them so.
        let mut directory = re::Directory::default();
        for (name, packed) in entries {
            let name = name.into_string().map_err(|_| unusable_name(&at.path()))?;
            directory.add(name, packed);
        }
        let digest = self.upload.add_message(&directory);
        self.children.push(directory);
        Ok(Packed::Directory(digest))
    }
}

fn unusable_name(path: &Path) -> RemoteError {
    RemoteError::Malformed {
        what: format!("upload of {}", path.display()),
        reason: "REAPI names and symlink targets must be UTF-8, and this one is not".to_string(),
    }
}

/// A packed file tree node.
#[derive(Debug, Clone)]
pub enum Packed {
    /// A regular file.
    File {
        /// Its content's digest.
        digest: re::Digest,
        /// Whether the owner may execute it.
        executable: bool,
    },
    /// A directory, by the digest of its `Directory` message.
    Directory(re::Digest),
    /// A symlink, with its target.
    Symlink(String),
}

/// Adding packed entries to a `Directory`.
pub trait DirectoryExt {
    /// Adds `node` as `name`; callers add names in ascending order.
    fn add(&mut self, name: String, node: Packed);
}

impl DirectoryExt for re::Directory {
    fn add(&mut self, name: String, node: Packed) {
        match node {
            Packed::File { digest, executable } => self.files.push(re::FileNode {
                name,
                digest: Some(digest),
                is_executable: executable,
                node_properties: None,
            }),
            Packed::Directory(digest) => self.directories.push(re::DirectoryNode {
                name,
                digest: Some(digest),
            }),
            Packed::Symlink(target) => self.symlinks.push(re::SymlinkNode {
                name,
                target,
                node_properties: None,
            }),
        }
    }
}

static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

impl Remote {
    fn cas(&self) -> ContentAddressableStorageClient<tonic::transport::Channel> {
        ContentAddressableStorageClient::new(self.channel())
            .max_decoding_message_size(BATCH_BYTES * 2)
    }

    fn blob_resource(&self, digest: &re::Digest) -> String {
        let path = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
        match self.address.instance() {
            "" => path,
            instance => format!("{instance}/{path}"),
        }
    }

    /// The digests among `digests` that the CAS does not hold.
    pub fn find_missing(&self, digests: Vec<re::Digest>) -> Result<Vec<re::Digest>, RemoteError> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(2000) {
            let request = re::FindMissingBlobsRequest {
                instance_name: self.address.instance().to_string(),
                blob_digests: chunk.to_vec(),
                digest_function: 0,
            };
            let response = self
                .block_on(self.cas().find_missing_blobs(request))
                .map_err(self.failed("FindMissingBlobs"))?;
            missing.extend(response.into_inner().missing_blob_digests);
        }
        Ok(missing)
    }

    /// Puts the blobs the CAS does not already hold.
    pub fn upload(&self, upload: Upload) -> Result<(), RemoteError> {
        let digests = upload.blobs.values().map(|(d, _)| d.clone()).collect();
        let missing = self.find_missing(digests)?;
        let mut blobs = upload.blobs;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for digest in missing {
            let Some((digest, source)) = blobs.remove(&digest.hash) else {
                continue;
            };
            let size = digest.size_bytes as usize;
            if size > BATCH_BLOB {
                self.write_stream(&digest, source)?;
                continue;
            }
            let data = match source {
                Source::Bytes(bytes) => bytes,
                Source::File(path) => fs::read(&path).map_err(io_error("cannot read", &path))?,
            };
            if batch_bytes + size > BATCH_BYTES {
                self.write_batch(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(re::batch_update_blobs_request::Request {
                digest: Some(digest),
                data,
                compressor: 0,
            });
        }
        if !batch.is_empty() {
            self.write_batch(batch)?;
        }
        Ok(())
    }

    fn write_batch(
        &self,
        requests: Vec<re::batch_update_blobs_request::Request>,
    ) -> Result<(), RemoteError> {
        let request = re::BatchUpdateBlobsRequest {
            instance_name: self.address.instance().to_string(),
            requests,
            digest_function: 0,
        };
        let response = self
            .block_on(self.cas().batch_update_blobs(request))
            .map_err(self.failed("BatchUpdateBlobs"))?;
        for answer in response.into_inner().responses {
            let digest = answer.digest.unwrap_or_default();
            self.blob_status("BatchUpdateBlobs", answer.status, &digest)?;
        }
        Ok(())
    }

    /// The error a batch reports for one blob, if any.
    fn blob_status(
        &self,
        call: &'static str,
        status: Option<bazel_remote_apis::google::rpc::Status>,
        digest: &re::Digest,
    ) -> Result<(), RemoteError> {
        match status {
            Some(status) if status.code != 0 => Err(RemoteError::Call {
                address: self.address.to_string(),
                call,
                code: tonic::Code::from(status.code),
                message: format!("{} (blob {})", status.message, show(digest)),
            }),
            _ => Ok(()),
        }
    }

    fn write_stream(&self, digest: &re::Digest, source: Source) -> Result<(), RemoteError> {
        let seq = UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed);
        let id = hex(&Sha256::digest(
            format!(
                "{}-{seq}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            )
            .as_bytes(),
        ));
        let resource = match self.address.instance() {
            "" => format!("uploads/{}/{}", &id[..32], self.blob_resource(digest)),
            instance => format!(
                "{instance}/uploads/{}/blobs/{}/{}",
                &id[..32],
                digest.hash,
                digest.size_bytes
            ),
        };
        let (mut reader, origin): (Box<dyn Read + Send>, PathBuf) = match source {
            Source::Bytes(bytes) => (
                Box::new(io::Cursor::new(bytes)),
                PathBuf::from(show(digest)),
            ),
            Source::File(path) => (
                Box::new(File::open(&path).map_err(io_error("cannot read", &path))?),
                path,
            ),
        };
        let total = digest.size_bytes;
        let mut offset = 0i64;
        let mut started = false;
        let failure = std::sync::Arc::new(std::sync::Mutex::new(None::<io::Error>));
        let failed = failure.clone();
        // Chunks are read as the stream is sent, so a large file is never all in memory. A read
        // error ends the stream unfinished, which the server refuses; the error is reported.
        let chunks = std::iter::from_fn(move || {
            if started && offset >= total {
                return None;
            }
            started = true;
            let mut data = vec![0; CHUNK.min((total - offset) as usize)];
            if let Err(e) = reader.read_exact(&mut data) {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return None;
            }
            let request = WriteRequest {
                resource_name: if offset == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: offset,
                finish_write: offset + data.len() as i64 >= total,
                data,
            };
            offset += request.data.len() as i64;
            Some(request)
        });
        let mut client = ByteStreamClient::new(self.channel());
        let sent = self.block_on(client.write(tokio_stream::iter(chunks)));
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(io_error("cannot read", &origin)(e));
        }
        sent.map_err(self.failed("ByteStream.Write"))?;
        Ok(())
    }

    /// Reads one blob, checked against its digest.
    pub fn read_blob(&self, digest: &re::Digest) -> Result<Vec<u8>, RemoteError> {
        let mut data = Vec::with_capacity(digest.size_bytes.max(0) as usize);
        self.read_stream(digest, &mut data)?;
        check(digest, &data)?;
        Ok(data)
    }

    /// Reads one blob through ByteStream into `out`, unchecked.
    fn read_stream(&self, digest: &re::Digest, out: &mut dyn Write) -> Result<(), RemoteError> {
        let mut client = ByteStreamClient::new(self.channel());
        let request = ReadRequest {
            resource_name: self.blob_resource(digest),
            read_offset: 0,
            read_limit: 0,
        };
        self.block_on(async {
            let mut stream = client.read(request).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
            }
            Ok::<_, tonic::Status>(())
        })
        .map_err(self.failed("ByteStream.Read"))
    }

    /// Reads small blobs in batches; each is checked against its digest.
    fn read_batch(
        &self,
        digests: Vec<re::Digest>,
    ) -> Result<HashMap<String, Vec<u8>>, RemoteError> {
        let mut blobs = HashMap::new();
        let mut group = Vec::new();
        let mut group_bytes = 0;
        let flush = |group: Vec<re::Digest>, blobs: &mut HashMap<String, Vec<u8>>| {
            let request = re::BatchReadBlobsRequest {
                instance_name: self.address.instance().to_string(),
                digests: group,
                acceptable_compressors: Vec::new(),
                digest_function: 0,
            };
            let response = self
                .block_on(self.cas().batch_read_blobs(request))
                .map_err(self.failed("BatchReadBlobs"))?;
            for answer in response.into_inner().responses {
                let digest = answer.digest.unwrap_or_default();
                self.blob_status("BatchReadBlobs", answer.status, &digest)?;
                check(&digest, &answer.data)?;
                blobs.insert(digest.hash, answer.data);
            }
            Ok::<_, RemoteError>(())
        };
        for digest in digests {
            let size = digest.size_bytes as usize;
            if group_bytes + size > BATCH_BYTES && !group.is_empty() {
                flush(std::mem::take(&mut group), &mut blobs)?;
                group_bytes = 0;
            }
            group_bytes += size;
            group.push(digest);
        }
        if !group.is_empty() {
            flush(group, &mut blobs)?;
        }
        Ok(blobs)
    }

    /// Reads the directory `digest` and every directory below it, each checked against its
    /// digest: the parts of a `Tree`, for [`Remote::materialise`].
    pub fn read_directories(
        &self,
        digest: &re::Digest,
    ) -> Result<(re::Directory, Vec<re::Directory>), RemoteError> {
        let decode = |digest: &re::Digest, bytes: &[u8]| {
            re::Directory::decode(bytes).map_err(|e| RemoteError::Malformed {
                what: format!("directory {}", show(digest)),
                reason: e.to_string(),
            })
        };
        let root = decode(digest, &self.read_blob(digest)?)?;
        let mut children = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut level: Vec<re::Digest> = Vec::new();
        let mut queue_from = |directory: &re::Directory, level: &mut Vec<re::Digest>| {
            for sub in &directory.directories {
                let digest = sub.digest.clone().unwrap_or_default();
                if seen.insert(digest.hash.clone()) {
                    level.push(digest);
                }
            }
        };
        queue_from(&root, &mut level);
        while !level.is_empty() {
            let (small, large): (Vec<_>, Vec<_>) = level
                .drain(..)
                .partition(|d| d.size_bytes as usize <= BATCH_BLOB);
            let mut read: Vec<(re::Digest, Vec<u8>)> = Vec::new();
            let mut batch = self.read_batch(small.clone())?;
            for digest in small {
                let bytes = batch
                    .remove(&digest.hash)
                    .ok_or_else(|| RemoteError::Call {
                        address: self.address.to_string(),
                        call: "BatchReadBlobs",
                        code: tonic::Code::NotFound,
                        message: format!("directory {} was not returned", show(&digest)),
                    })?;
                read.push((digest, bytes));
            }
            for digest in large {
                let bytes = self.read_blob(&digest)?;
                read.push((digest, bytes));
            }
            for (digest, bytes) in read {
                let directory = decode(&digest, &bytes)?;
                queue_from(&directory, &mut level);
                children.push(directory);
            }
        }
        Ok((root, children))
    }

    /// Writes the tree under `root` into the existing directory `dest`: every blob is checked
    /// against its digest, and nothing outside `dest` is touched whatever the tree says.
    pub fn materialise(
        &self,
        root: &re::Directory,
        children: &[re::Directory],
        dest: &Path,
    ) -> Result<(), RemoteError> {
        let by_digest: HashMap<String, &re::Directory> = children
            .iter()
            .map(|d| (digest_of(&d.encode_to_vec()).hash, d))
            .collect();
        let mut files: Vec<(re::Digest, PathBuf, bool)> = Vec::new();
        let mut links: Vec<(String, PathBuf)> = Vec::new();
        let mut queue = vec![(root, dest.to_path_buf(), 0usize)];
        while let Some((directory, at, depth)) = queue.pop() {
            if depth > 512 {
                return Err(malformed_tree("directories nest more than 512 deep"));
            }
            let mut seen = std::collections::HashSet::new();
            let names = directory
                .files
                .iter()
                .map(|f| &f.name)
                .chain(directory.directories.iter().map(|d| &d.name))
                .chain(directory.symlinks.iter().map(|s| &s.name));
            for name in names {
                if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                    return Err(malformed_tree(&format!("it names an entry `{name}`")));
                }
                if !seen.insert(name) {
                    return Err(malformed_tree(&format!("it names `{name}` twice")));
                }
            }
            for sub in &directory.directories {
                let digest = sub.digest.clone().unwrap_or_default();
                let child = by_digest.get(&digest.hash).ok_or_else(|| {
                    malformed_tree(&format!("directory {} is not in the tree", show(&digest)))
                })?;
                let path = at.join(&sub.name);
                fs::create_dir(&path).map_err(io_error("cannot create", &path))?;
                queue.push((child, path, depth + 1));
            }
            for file in &directory.files {
                let digest = file.digest.clone().unwrap_or_default();
                files.push((digest, at.join(&file.name), file.is_executable));
            }
            for link in &directory.symlinks {
                links.push((link.target.clone(), at.join(&link.name)));
            }
        }
        let small: Vec<re::Digest> = {
            let mut unique: BTreeMap<&str, &re::Digest> = BTreeMap::new();
            for (digest, _, _) in &files {
                if digest.size_bytes as usize <= BATCH_BLOB {
                    unique.insert(&digest.hash, digest);
                }
            }
            unique.into_values().cloned().collect()
        };
        let blobs = self.read_batch(small)?;
        for (digest, path, executable) in &files {
            let mode = if *executable { 0o755 } else { 0o644 };
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(io_error("cannot create", path))?;
            match blobs.get(&digest.hash) {
                Some(data) => file
                    .write_all(data)
                    .map_err(io_error("cannot write", path))?,
                None => {
                    let mut hashing = HashingWriter {
                        inner: &mut file,
                        hasher: Sha256::new(),
                        size: 0,
                    };
                    self.read_stream(digest, &mut hashing)?;
                    let got = re::Digest {
                        hash: hex(&hashing.hasher.finalize()),
                        size_bytes: hashing.size as i64,
                    };
                    if got != *digest {
                        return Err(RemoteError::Corrupt {
                            digest: show(digest),
                            got: show(&got),
                        });
                    }
                }
            }
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(io_error("cannot set the mode of", path))?;
        }
        for (target, path) in links {
            symlink(&target, &path).map_err(io_error("cannot create", &path))?;
        }
        Ok(())
    }
}

fn malformed_tree(reason: &str) -> RemoteError {
    RemoteError::Malformed {
        what: "tree".to_string(),
        reason: reason.to_string(),
    }
}

/// Checks `data` against `digest`.
pub fn check(digest: &re::Digest, data: &[u8]) -> Result<(), RemoteError> {
    let got = digest_of(data);
    if got != *digest {
        return Err(RemoteError::Corrupt {
            digest: show(digest),
            got: show(&got),
        });
    }
    Ok(())
}

struct HashingWriter<'w> {
    inner: &'w mut File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_with_the_size() {
        let digest = digest_of(b"abc");
        assert_eq!(
            digest.hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest.size_bytes, 3);
        assert!(check(&digest, b"abd").is_err());
        assert!(check(&digest, b"abc").is_ok());
    }

    #[test]
    fn a_packed_directory_lists_its_entries_sorted_with_their_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("sub/a"), "a").unwrap();
        fs::write(root.join("run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("b.txt", root.join("link")).unwrap();
        let mut upload = Upload::default();
        let mut children = Vec::new();
        let Packed::Directory(digest) = upload.add_path(&root, &mut children).unwrap() else {
            panic!("a directory packs as a directory");
        };
        let top = children.last().unwrap();
        assert_eq!(encode(top).0, digest);
        let files: Vec<(&str, bool)> = top
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.is_executable))
            .collect();
        assert_eq!(files, [("b.txt", false), ("run", true)]);
        assert_eq!(top.directories[0].name, "sub");
        assert_eq!(top.symlinks[0].target, "b.txt");
        // Five blobs: the files b.txt, run and sub/a, and the Directory messages of sub and root.
        assert_eq!(upload.blobs.len(), 5);
    }
}
