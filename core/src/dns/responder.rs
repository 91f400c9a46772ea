//! Answering one DNS message from a [`ClusterZone`]: the wire format is hickory-proto's; this
//! decides the response code, the records, and truncation for UDP.

use super::zone::ClusterZone;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};

/// The largest UDP response without EDNS (RFC 1035).
const UDP_LIMIT: usize = 512;

/// The response to `request` (wire bytes), or `None` for bytes that are no DNS query.
/// `udp` caps the size at what the client said it accepts, setting TC when over.
pub(crate) fn respond(zone: &ClusterZone, request: &[u8], udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(request).ok()?;
    if query.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(false)
        .set_authoritative(true);
    response.add_queries(query.queries().iter().cloned());
    let question = match (query.op_code(), query.queries()) {
        (OpCode::Query, [question]) => question,
        (OpCode::Query, _) => {
            response.set_response_code(ResponseCode::FormErr);
            return response.to_vec().ok();
        }
        _ => {
            response.set_response_code(ResponseCode::NotImp);
            return response.to_vec().ok();
        }
    };
    let lookup = zone.lookup(question.name(), question.query_type());
    if !lookup.exists {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response.add_answers(lookup.answers);
    response.add_additionals(lookup.additionals);
    let bytes = response.to_vec().ok()?;
    let limit = query.extensions().as_ref().map_or(UDP_LIMIT, |edns| {
        usize::from(edns.max_payload()).max(UDP_LIMIT)
    });
    if udp && bytes.len() > limit {
        response.take_answers();
        response.take_additionals();
        response.set_truncated(true);
        return response.to_vec().ok();
    }
    Some(bytes)
}
