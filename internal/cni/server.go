package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
)

// Server answers the plugin's requests on a unix socket and hands them to a
// Handler.
type Server struct {
	path    string
	handler Handler
	log     logr.Logger
	ln      net.Listener
}

// Listen creates the socket at path for h: it creates the socket's
// directory (mode 0700) if missing, removes a stale socket left by an agent
// that is gone, and makes the socket mode 0600. It fails if path is not a
// socket, or if another process still answers on it. Serve then answers
// requests.
func Listen(path string, h Handler, log logr.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the directory of CNI socket %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on CNI socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting CNI socket %s: %w", path, err)
	}
	return &Server{path: path, handler: h, log: log, ln: ln}, nil
}

// removeStaleSocket removes a socket nobody answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting CNI socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("CNI socket path %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another process serves CNI socket %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale CNI socket %s: %w", path, err)
	}
	return nil
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// Serve answers requests until ctx ends, then waits briefly for requests
// under way, closes and removes the socket, and returns nil. It returns an
// error if serving fails earlier (the socket is removed then too).
func (s *Server) Serve(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.mux(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	defer func() {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error(err, "Removing the CNI socket", "path", s.path)
		}
	}()
	s.log.Info("Serving CNI requests", "path", s.path)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	select {
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil {
			s.log.Error(err, "Waiting for CNI requests under way")
			srv.Close()
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("serving CNI socket %s: %w", s.path, err)
	}
}

// mux routes the protocol's requests.
func (s *Server) mux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathAdd, s.attachment("ADD", true, s.handler.Add))
	mux.HandleFunc("POST "+PathDel, s.attachment("DEL", false, s.handler.Del))
	mux.HandleFunc("POST "+PathCheck, s.attachment("CHECK", true, s.handler.Check))
	mux.HandleFunc("POST "+PathGC, s.gc)
	mux.HandleFunc("GET "+PathStatus, s.status)
	return mux
}

// attachment serves a command whose body is an Attachment. full: the
// command needs a pod UID and addresses, not just the key.
func (s *Server) attachment(cmd string, full bool, call func(context.Context, Attachment) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var a Attachment
		if !decode(w, r, &a) {
			return
		}
		check := a.Key().validate
		if full {
			check = a.validate
		}
		if err := check(); err != nil {
			writeReply(w, http.StatusBadRequest, err)
			return
		}
		log := s.log.WithValues("command", cmd, "attachment", a.Key().String(), "podUID", a.PodUID, "pod", a.Namespace+"/"+a.Name)
		if err := call(logr.NewContext(r.Context(), log), a); err != nil {
			log.Error(err, "CNI command failed", "ips", a.IPs)
			writeReply(w, http.StatusInternalServerError, err)
			return
		}
		log.V(1).Info("CNI command done", "ips", a.IPs)
		writeReply(w, http.StatusOK, nil)
	}
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req gcRequest
	if !decode(w, r, &req) {
		return
	}
	for _, k := range req.Valid {
		if err := k.validate(); err != nil {
			writeReply(w, http.StatusBadRequest, fmt.Errorf("valid attachment %s: %w", k, err))
			return
		}
	}
	log := s.log.WithValues("command", "GC", "valid", len(req.Valid))
	if err := s.handler.GC(logr.NewContext(r.Context(), log), req.Valid); err != nil {
		log.Error(err, "CNI command failed")
		writeReply(w, http.StatusInternalServerError, err)
		return
	}
	log.V(1).Info("CNI command done")
	writeReply(w, http.StatusOK, nil)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	sc, ok := s.handler.(StatusChecker)
	if !ok {
		writeReply(w, http.StatusOK, nil)
		return
	}
	if err := sc.Status(logr.NewContext(r.Context(), s.log.WithValues("command", "STATUS"))); err != nil {
		writeReply(w, http.StatusServiceUnavailable, err)
		return
	}
	writeReply(w, http.StatusOK, nil)
}

// decode reads a JSON request body of at most MaxRequestBytes into v, or
// answers the error and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, MaxRequestBytes)
	if err := json.NewDecoder(body).Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeReply(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request larger than %d bytes", MaxRequestBytes))
			return false
		}
		writeReply(w, http.StatusBadRequest, fmt.Errorf("decoding the request: %w", err))
		return false
	}
	return true
}

func writeReply(w http.ResponseWriter, status int, err error) {
	var rep reply
	if err != nil {
		rep.Error = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(rep)
}
