//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`), so that
//! `grpcurl` and `grpcui` work without the `.proto` files.
//!
//! Our own rather than tonic-reflection's: that one ends the whole stream
//! at the first request it cannot answer (a symbol that does not exist), as
//! a gRPC error. The reflection protocol answers such a request with an
//! `ErrorResponse` message and keeps the stream open for the next ones.
//! Files come with their dependencies, so a client needs one round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

/// What the descriptor sets describe: every file (encoded) and which file
/// defines each symbol.
#[derive(Debug, Default)]
pub struct Index {
    files: BTreeMap<String, (Vec<u8>, Vec<String>)>,
    symbols: BTreeMap<String, String>,
    services: Vec<String>,
}

fn add_messages(
    prefix: &str,
    file: &str,
    messages: &[prost_types::DescriptorProto],
    symbols: &mut BTreeMap<String, String>,
) {
    for m in messages {
        let name = format!("{prefix}.{}", m.name());
        for f in &m.field {
            symbols.insert(format!("{name}.{}", f.name()), file.to_string());
        }
        for e in &m.enum_type {
            symbols.insert(format!("{name}.{}", e.name()), file.to_string());
        }
        add_messages(&name, file, &m.nested_type, symbols);
        symbols.insert(name, file.to_string());
    }
}

impl Index {
    /// Indexes encoded `FileDescriptorSet`s.
    pub fn new(sets: &[&[u8]]) -> Result<Index, prost::DecodeError> {
        let mut index = Index::default();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for f in set.file {
                let name = f.name().to_string();
                let package = f.package().to_string();
                let prefix = if package.is_empty() {
                    String::new()
                } else {
                    package.clone()
                };
                for s in &f.service {
                    let svc = format!("{prefix}.{}", s.name())
                        .trim_start_matches('.')
                        .to_string();
                    for m in &s.method {
                        index.symbols.insert(format!("{svc}.{}", m.name()), name.clone());
                    }
                    index.symbols.insert(svc.clone(), name.clone());
                    index.services.push(svc);
                }
                for e in &f.enum_type {
                    let e = format!("{prefix}.{}", e.name())
                        .trim_start_matches('.')
                        .to_string();
                    index.symbols.insert(e, name.clone());
                }
                let mut symbols = BTreeMap::new();
                add_messages(&prefix, &name, &f.message_type, &mut symbols);
                index.symbols.extend(
                    symbols
                        .into_iter()
                        .map(|(k, v)| (k.trim_start_matches('.').to_string(), v)),
                );
                let deps = f.dependency.clone();
                index.files.insert(name, (f.encode_to_vec(), deps));
            }
        }
        index.services.sort();
        index.services.dedup();
        Ok(index)
    }

    /// A file and everything it imports, the file first.
    fn with_dependencies(&self, file: &str) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![file.to_string()];
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            let (bytes, deps) = self.files.get(&f)?;
            out.push(bytes.clone());
            todo.extend(deps.iter().rev().cloned());
        }
        Some(out)
    }

    fn file_by_name(&self, file: &str) -> Result<Vec<Vec<u8>>, (Code, String)> {
        self.with_dependencies(file).ok_or_else(|| {
            (
                Code::NotFound,
                format!("file {} not found", crate::domain::validate::quote(file)),
            )
        })
    }

    fn file_of_symbol(&self, symbol: &str) -> Result<Vec<Vec<u8>>, (Code, String)> {
        let symbol = symbol.trim_start_matches('.');
        match self.symbols.get(symbol) {
            Some(f) => self.file_by_name(f),
            None => Err((
                Code::NotFound,
                format!("symbol {} not found", crate::domain::validate::quote(symbol)),
            )),
        }
    }
}

/// One reflection service per protocol version, over the same index.
macro_rules! reflection {
    ($module:ident, $pb:path) => {
        pub mod $module {
            use super::*;
            use rpb::server_reflection_request::MessageRequest;
            use rpb::server_reflection_response::MessageResponse;
            use $pb as rpb;

            #[derive(Debug, Clone)]
            pub struct Reflection(pub Arc<Index>);

            type Answers = Pin<Box<dyn Stream<Item = Result<rpb::ServerReflectionResponse, Status>> + Send>>;

            impl Reflection {
                fn answer(&self, req: &rpb::ServerReflectionRequest) -> MessageResponse {
                    let files = |r: Result<Vec<Vec<u8>>, (Code, String)>| match r {
                        Ok(file_descriptor_proto) => {
                            MessageResponse::FileDescriptorResponse(rpb::FileDescriptorResponse {
                                file_descriptor_proto,
                            })
                        }
                        Err((code, message)) => MessageResponse::ErrorResponse(rpb::ErrorResponse {
                            error_code: code as i32,
                            error_message: message,
                        }),
                    };
                    match &req.message_request {
                        None => MessageResponse::ErrorResponse(rpb::ErrorResponse {
                            error_code: Code::InvalidArgument as i32,
                            error_message: "empty reflection request".into(),
                        }),
                        Some(MessageRequest::FileByFilename(f)) => files(self.0.file_by_name(f)),
                        Some(MessageRequest::FileContainingSymbol(s)) => files(self.0.file_of_symbol(s)),
                        Some(MessageRequest::FileContainingExtension(_)) => {
                            MessageResponse::ErrorResponse(rpb::ErrorResponse {
                                error_code: Code::NotFound as i32,
                                error_message: "allot.v1 defines no extensions".into(),
                            })
                        }
                        // No extensions: an empty list (grpcurl asks).
                        Some(MessageRequest::AllExtensionNumbersOfType(t)) => {
                            MessageResponse::AllExtensionNumbersResponse(rpb::ExtensionNumberResponse {
                                base_type_name: t.clone(),
                                extension_number: vec![],
                            })
                        }
                        Some(MessageRequest::ListServices(_)) => {
                            MessageResponse::ListServicesResponse(rpb::ListServiceResponse {
                                service: self
                                    .0
                                    .services
                                    .iter()
                                    .map(|s| rpb::ServiceResponse { name: s.clone() })
                                    .collect(),
                            })
                        }
                    }
                }
            }

            #[tonic::async_trait]
            impl rpb::server_reflection_server::ServerReflection for Reflection {
                type ServerReflectionInfoStream = Answers;

                async fn server_reflection_info(
                    &self,
                    req: Request<Streaming<rpb::ServerReflectionRequest>>,
                ) -> Result<Response<Answers>, Status> {
                    let mut requests = req.into_inner();
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    let me = self.clone();
                    tokio::spawn(async move {
                        // Every request gets an answer, an error one included;
                        // only the client ends the stream.
                        while let Ok(Some(req)) = requests.message().await {
                            let resp = rpb::ServerReflectionResponse {
                                valid_host: req.host.clone(),
                                message_response: Some(me.answer(&req)),
                                original_request: Some(req),
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok(Response::new(Box::pin(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                    )))
                }
            }
        }
    };
}

reflection!(v1, tonic_reflection::pb::v1);
reflection!(v1alpha, tonic_reflection::pb::v1alpha);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_resolve_to_their_files_with_dependencies() {
        let index = Index::new(&[allot_proto::v1::FILE_DESCRIPTOR_SET]).unwrap();
        assert!(
            index.services.contains(&"allot.v1.JobService".to_string()),
            "{:?}",
            index.services
        );
        let files = index.file_of_symbol("allot.v1.JobService").unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|b| {
                prost_types::FileDescriptorProto::decode(b.as_slice())
                    .unwrap()
                    .name()
                    .to_string()
            })
            .collect();
        assert_eq!(names[0], "allot/v1/jobs.proto");
        assert!(names.contains(&"allot/v1/types.proto".to_string()), "{names:?}");
        assert!(index.file_of_symbol(".allot.v1.JobSpec").is_ok());
        assert!(index.file_of_symbol("allot.v1.JobService.SubmitJob").is_ok());
        assert!(index.file_of_symbol("allot.v1.Resources.gpus").is_ok());
        assert_eq!(
            index.file_of_symbol("allot.v1.Nope").unwrap_err().0,
            Code::NotFound
        );
    }
}
