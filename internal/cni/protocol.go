package cni

import (
	"context"
	"errors"
)

// Paths of the socket protocol. ADD, DEL and CHECK post an Attachment, GC
// posts a gcRequest; STATUS is a GET with no body. Every answer is JSON: an
// empty object on success, {"error": "..."} with a non-2xx status otherwise.
const (
	PathAdd    = "/v1/add"
	PathDel    = "/v1/del"
	PathCheck  = "/v1/check"
	PathGC     = "/v1/gc"
	PathStatus = "/v1/status"
)

// MaxRequestBytes bounds a request body: an attachment is a few hundred
// bytes, and a GC list of thousands of attachments still fits.
const MaxRequestBytes = 1 << 20

// Handler is what the agent does for each CNI command the plugin relays.
// The server calls it concurrently for different attachments (the runtime
// never runs two commands for one attachment at once, and never runs GC
// while an ADD or DEL is under way). A returned error fails the command and
// its message reaches the runtime.
type Handler interface {
	// Add records the attachment and programs its pod; when it returns nil
	// the pod's addresses may carry traffic under its policies.
	Add(ctx context.Context, a Attachment) error
	// Del forgets the attachment. It must succeed for an attachment it does
	// not know (DEL is repeated, and may come without a prior ADD); only the
	// key is sure to be set.
	Del(ctx context.Context, a Attachment) error
	// Check reports an error unless the attachment is held with exactly
	// these addresses.
	Check(ctx context.Context, a Attachment) error
	// GC forgets every attachment not in valid.
	GC(ctx context.Context, valid []AttachmentKey) error
}

// StatusChecker is implemented by a Handler that can tell whether it is
// ready for ADD (CNI STATUS). A Handler without it is ready whenever its
// server answers.
type StatusChecker interface {
	Status(ctx context.Context) error
}

// gcRequest is the body of a GC request.
type gcRequest struct {
	Valid []AttachmentKey `json:"valid"`
}

// reply is the body of every answer.
type reply struct {
	Error string `json:"error,omitempty"`
}

// ErrUnavailable is wrapped by the Client's errors when the agent gave no
// answer: nothing listens on the socket, or the answer did not come in time.
var ErrUnavailable = errors.New("nftguard agent unavailable")

// agentError is an error the agent answered with.
type agentError struct{ message string }

func (e *agentError) Error() string { return "nftguard agent: " + e.message }
