//! Status codes that tonic picks for malformed messages, corrected where a
//! client needs to tell its own mistake from the server's: a message that
//! does not decode (invalid UTF-8, truncated) is INVALID_ARGUMENT, not
//! INTERNAL (which allot keeps for storage errors); one over the size limit
//! is RESOURCE_EXHAUSTED, as the gRPC status code guide says, not
//! OUT_OF_RANGE.
//!
//! The codec reports these before any handler runs, so the status is in the
//! response's headers (a trailers-only response): this layer rewrites it
//! there, for every service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::{Code, Status};

/// The tower layer that fixes the codes (see the module).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusCodes;

impl<S> tower::Layer<S> for StatusCodes {
    type Service = StatusCodesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StatusCodesService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StatusCodesService<S> {
    inner: S,
}

/// The code a status from the codec should have had, if it is one of those.
fn corrected(status: &Status) -> Option<Code> {
    let m = status.message();
    match status.code() {
        Code::Internal if m.starts_with("failed to decode Protobuf message") => Some(Code::InvalidArgument),
        Code::OutOfRange if m.starts_with("Error, decoded message length too large") => {
            Some(Code::ResourceExhausted)
        }
        _ => None,
    }
}

fn fix<B>(mut response: http::Response<B>) -> http::Response<B> {
    if let Some(status) = Status::from_header_map(response.headers())
        && let Some(code) = corrected(&status)
    {
        let fixed = Status::new(code, status.message().to_string());
        let headers = response.headers_mut();
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        let _ = fixed.add_header(headers);
    }
    response
}

impl<S, Req, B> tower::Service<Req> for StatusCodesService<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map(fix) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_size_errors_get_the_codes_clients_expect() {
        let bad = Status::internal(
            "failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(corrected(&bad), Some(Code::InvalidArgument));
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        assert_eq!(corrected(&big), Some(Code::ResourceExhausted));
        // Our own statuses are left alone.
        assert_eq!(corrected(&Status::internal("storage error: io")), None);
        assert_eq!(corrected(&Status::out_of_range("offset")), None);
        let mut r = http::Response::new(());
        bad.add_header(r.headers_mut()).unwrap();
        let r = fix(r);
        let s = Status::from_header_map(r.headers()).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("UTF-8"));
    }
}
