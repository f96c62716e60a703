package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// DefaultTimeout bounds a Client request unless configured otherwise.
const DefaultTimeout = 10 * time.Second

// Client talks to the agent's Server; the plugin uses it. It implements
// Handler and StatusChecker, so the agent's side can be tested through it.
type Client struct {
	socket string
	http   *http.Client
}

var (
	_ Handler       = (*Client)(nil)
	_ StatusChecker = (*Client)(nil)
)

// NewClient returns a client of the server listening on socket; each
// request gives up after timeout (DefaultTimeout if not positive).
func NewClient(socket string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var d net.Dialer
	return &Client{
		socket: socket,
		http: &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return d.DialContext(ctx, "unix", socket)
				},
				DisableKeepAlives: true,
			},
		},
	}
}

// Add asks the agent to record the attachment and program its pod.
func (c *Client) Add(ctx context.Context, a Attachment) error { return c.post(ctx, PathAdd, a) }

// Del asks the agent to forget the attachment.
func (c *Client) Del(ctx context.Context, a Attachment) error { return c.post(ctx, PathDel, a) }

// Check asks the agent whether it holds the attachment with its addresses.
func (c *Client) Check(ctx context.Context, a Attachment) error { return c.post(ctx, PathCheck, a) }

// GC asks the agent to forget every attachment not in valid.
func (c *Client) GC(ctx context.Context, valid []AttachmentKey) error {
	if valid == nil {
		valid = []AttachmentKey{}
	}
	return c.post(ctx, PathGC, gcRequest{Valid: valid})
}

// Status asks the agent whether it is ready for ADD.
func (c *Client) Status(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://nftguard"+PathStatus, nil)
	if err != nil {
		return err
	}
	return c.do(req)
}

func (c *Client) post(ctx context.Context, path string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encoding the request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://nftguard"+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(req)
}

// do sends the request; an error wraps ErrUnavailable when no answer came.
func (c *Client) do(req *http.Request) error {
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%w at %s: %w", ErrUnavailable, c.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxRequestBytes))
	if err != nil {
		return fmt.Errorf("%w at %s: reading the answer: %w", ErrUnavailable, c.socket, err)
	}
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil || r.Error == "" {
		return &agentError{message: "answered " + resp.Status}
	}
	return &agentError{message: r.Error}
}
