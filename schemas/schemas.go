package schemas

import "embed"

// Files holds decider's own .avsc files: decider.Reply (with the
// decider.Status enum) and decider.Snapshot.
//
//go:embed *.avsc
var Files embed.FS

// Full names of decider's own records.
const (
	ReplyName    = "decider.Reply"
	SnapshotName = "decider.Snapshot"
)

// Status is the outcome of one command (the decider.Status enum).
type Status string

// The statuses of a Reply; see schemas/README.md for when each is sent.
const (
	Accepted Status = "ACCEPTED" // decided; Events new events written, Version is the new version
	Rejected Status = "REJECTED" // the domain refused; Reason is its code
	Conflict Status = "CONFLICT" // ce_expectedversion did not match; Version is the current one
	Expired  Status = "EXPIRED"  // read after ce_deadline, not decided
	Invalid  Status = "INVALID"  // the command could not be read; Reason says why
	Failed   Status = "FAILED"   // the handler panicked or returned a non-domain error
)

// Reply is the decider.Reply record: the answer to one command.
type Reply struct {
	CommandID   string `avro:"commandId" json:"commandId"`
	AggregateID string `avro:"aggregateId" json:"aggregateId"`
	Status      Status `avro:"status" json:"status"`
	Version     int64  `avro:"version" json:"version"`
	Reason      string `avro:"reason" json:"reason"`
	Events      int32  `avro:"events" json:"events"`
}

// Snapshot is the decider.Snapshot record, the value of a changelog record:
// an aggregate's encoded state, its version, and the offset of the last
// command applied to it.
type Snapshot struct {
	AggregateID   string  `avro:"aggregateId"`
	Version       int64   `avro:"version"`
	CommandOffset int64   `avro:"commandOffset"`
	State         []byte  `avro:"state"`
	Recent        []Reply `avro:"recent"`
}

// Header names (CloudEvents Kafka binding, binary mode, plus decider's own
// extensions). Values are UTF-8 strings.
const (
	HeaderSpecVersion      = "ce_specversion"
	HeaderID               = "ce_id"
	HeaderType             = "ce_type"
	HeaderSource           = "ce_source"
	HeaderSubject          = "ce_subject"
	HeaderTime             = "ce_time"
	HeaderContentType      = "content-type"
	HeaderReplyTo          = "ce_replyto"
	HeaderReplyPartition   = "ce_replypartition"
	HeaderExpectedVersion  = "ce_expectedversion"
	HeaderDeadline         = "ce_deadline"
	HeaderCorrelationID    = "ce_correlationid"
	HeaderCausationID      = "ce_causationid"
	HeaderAggregateVersion = "ce_aggregateversion"

	// Headers added to a dead-letter copy: why it was refused and where it
	// was read.
	HeaderDLQReason    = "decider_dlq_reason"
	HeaderDLQDetail    = "decider_dlq_detail"
	HeaderDLQTopic     = "decider_dlq_topic"
	HeaderDLQPartition = "decider_dlq_partition"
	HeaderDLQOffset    = "decider_dlq_offset"
)

// Fixed header values.
const (
	SpecVersion = "1.0"
	ContentType = "application/avro"
)
