// Package schemas is decider's wire format: the Avro schemas of the contract
// (decider.Reply, decider.Status, decider.Snapshot) as embedded .avsc files,
// the single-object codec (0xC3 0x01, the 8-byte little-endian CRC-64-AVRO
// fingerprint of the writer schema, the binary body), the CloudEvents header
// names, and the Registry that maps Avro full names to Go types.
//
// The registry is resolved once at start-up: Bind fails with the name of what
// is missing, so a worker never discovers a missing schema while running.
// Reading resolves any known writer schema of a name into the current one,
// which is how a domain evolves its records without stopping its callers.
//
// schemas/README.md documents the wire format for callers in any language.
package schemas
