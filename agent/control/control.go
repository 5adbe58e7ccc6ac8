// Package control is the one channel between the CLI and the running
// daemon: a unix socket that only root reaches (0600, in a 0700 directory
// of the state dir), one JSON request per connection and one answer, the
// daemon's own verdict (agent.ControlResult). A connection that ends
// without an answer is no verdict: the CLI never reads it as done.
//
// Nothing is queued on disk: a request lives as long as its connection, so
// a daemon killed before it answers leaves nothing behind to be taken
// again at its next start (what it recorded in the state before it died
// is finished there, as for any step).
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klp-agent/klp-agent/agent"
)

// Sentinel errors the CLI branches on.
var (
	// ErrNoDaemon is nothing listening on the socket: no daemon runs, or
	// one is still starting or already stopping.
	ErrNoDaemon = errors.New("no daemon answers on the control socket")
	// ErrNoAnswer is a request sent but not answered: the daemon stopped
	// (or was killed) first, or the wait ran out. It may still be taken.
	ErrNoAnswer = errors.New("no answer from the daemon")
	// ErrUnsafe is a socket directory or path the server will not use.
	ErrUnsafe = errors.New("unsafe control socket path")
)

// maxRequest bounds what the server reads from a connection.
const maxRequest = 64 << 10

// readTimeout bounds how long a connection may take to send its request.
const readTimeout = 10 * time.Second

// Handler judges one request. An error is no verdict: the connection is
// closed without an answer (the daemon is stopping).
type Handler func(ctx context.Context, req agent.ControlRequest) (agent.ControlResult, error)

// Server is the daemon's end of the channel.
type Server struct {
	dir  *os.File // the socket's directory, held open: the socket is created and removed through it
	name string
	ln   *net.UnixListener
	path string
	wg   sync.WaitGroup
}

// Listen creates the socket name in dir for the daemon, which must hold
// the state lock (so a socket found there is a stale one of its own). dir
// is created 0700 if missing; one that is a symlink, not a directory or
// not owned by this process's user is refused (ErrUnsafe), and its mode is
// set to 0700. Something at name is replaced only if it is a socket.
func Listen(dir, name string) (*Server, error) {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("control socket directory: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("%w: %s is not a directory (a symlink?): remove it", ErrUnsafe, dir)
		}
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	d := os.NewFile(uintptr(fd), dir)
	s := &Server{dir: d, name: name, path: dir + "/" + name}
	if err := s.listen(); err != nil {
		d.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) listen() error {
	fd := int(s.dir.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: s.dir.Name(), Err: err}
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s is owned by uid %d, not %d", ErrUnsafe, s.dir.Name(), st.Uid, os.Geteuid())
	}
	if st.Mode&0o777 != 0o700 {
		if err := unix.Fchmod(fd, 0o700); err != nil {
			return &os.PathError{Op: "chmod", Path: s.dir.Name(), Err: err}
		}
	}
	switch err := unix.Fstatat(fd, s.name, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK:
		// A stale socket (a daemon killed before it removed its own).
		if err := unix.Unlinkat(fd, s.name, 0); err != nil {
			return &os.PathError{Op: "remove stale socket", Path: s.path, Err: err}
		}
	case err == nil:
		return fmt.Errorf("%w: %s exists and is not a socket: remove it", ErrUnsafe, s.path)
	case !errors.Is(err, unix.ENOENT):
		return &os.PathError{Op: "lstat", Path: s.path, Err: err}
	}
	// Through the directory held open: the socket goes where it was
	// checked, and a long state dir path does not hit sun_path's limit.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: viaFD(fd, s.name), Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := unix.Fchmodat(fd, s.name, 0o600, 0); err != nil {
		ln.Close()
		unix.Unlinkat(fd, s.name, 0)
		return &os.PathError{Op: "chmod", Path: s.path, Err: err}
	}
	s.ln = ln
	return nil
}

func viaFD(dirfd int, name string) string { return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name) }

// Path is where the socket is.
func (s *Server) Path() string { return s.path }

// Serve answers requests with h until ctx ends, then stops listening,
// removes the socket and returns once every connection is closed (those
// not answered by then get no answer).
func (s *Server) Serve(ctx context.Context, h Handler) {
	go func() {
		<-ctx.Done()
		s.ln.Close()
	}()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				// Not expected (EMFILE): do not spin.
				time.Sleep(100 * time.Millisecond)
				continue
			}
			break
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			serveConn(ctx, c, h)
		}()
	}
	s.wg.Wait()
	unix.Unlinkat(int(s.dir.Fd()), s.name, 0)
	s.dir.Close()
}

func serveConn(ctx context.Context, c *net.UnixConn, h Handler) {
	if uid, err := peerUID(c); err != nil || (uid != 0 && uid != os.Geteuid()) {
		// The socket's mode keeps others out; this is the second lock.
		json.NewEncoder(c).Encode(agent.ControlResult{Message: fmt.Sprintf("refused: only root may ask the daemon (peer uid %d, %v)", uid, err)})
		return
	}
	c.SetReadDeadline(time.Now().Add(readTimeout))
	var req agent.ControlRequest
	if err := json.NewDecoder(io.LimitReader(c, maxRequest)).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(agent.ControlResult{Message: "unreadable request: " + err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	res, err := h(ctx, req)
	if err != nil {
		return // no verdict: the asker must not read one
	}
	json.NewEncoder(c).Encode(res)
}

func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) { cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return -1, err
	}
	if serr != nil {
		return -1, serr
	}
	return int(cred.Uid), nil
}

// Ask sends req to the daemon listening at name in dir and returns its
// verdict. ErrNoDaemon: nothing listens there (nothing was sent).
// ErrNoAnswer: sent, but the connection ended or wait ran out before an
// answer; the request may or may not be taken.
func Ask(ctx context.Context, dir, name string, req agent.ControlRequest, wait time.Duration) (agent.ControlResult, error) {
	var res agent.ControlResult
	path := dir + "/" + name
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return res, fmt.Errorf("%w (%s)", ErrNoDaemon, path)
	}
	if err != nil {
		return res, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", viaFD(dfd, name))
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return res, fmt.Errorf("%w (%s)", ErrNoDaemon, path)
	}
	if err != nil {
		return res, fmt.Errorf("connect to %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return res, fmt.Errorf("%w: sending to %s: %w", ErrNoAnswer, path, err)
	}
	if err := json.NewDecoder(io.LimitReader(c, maxRequest)).Decode(&res); err != nil {
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return res, fmt.Errorf("%w: %w", ErrNoAnswer, ctx.Err())
		case errors.As(err, &ne) && ne.Timeout():
			return res, fmt.Errorf("%w within %s", ErrNoAnswer, wait)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
			return res, fmt.Errorf("%w: the daemon closed the connection first (it stopped or was killed)", ErrNoAnswer)
		default:
			return res, fmt.Errorf("%w: %w", ErrNoAnswer, err)
		}
	}
	return res, nil
}
