// Package install puts nftguard's CNI plugin on a node: the binary into the
// CNI bin directory, and an nftguard entry at the end of the plugin list of
// the network configuration the container runtime uses. It checks and
// repairs that entry when the pod network's own installer rewrites the
// file, and removes both on uninstall. The agent DaemonSet runs it.
package install

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftguard/nftguard/internal/cni"
	"github.com/nftguard/nftguard/internal/cni/atomicfile"
)

// Default directories, as containerd and CRI-O use them.
const (
	DefaultConfDir = "/etc/cni/net.d"
	DefaultBinDir  = "/opt/cni/bin"
)

// Installer installs, checks and removes the plugin. The zero value of a
// field means its default. Its methods may be called concurrently.
type Installer struct {
	// ConfDir is the runtime's CNI configuration directory.
	ConfDir string
	// BinDir is the runtime's CNI plugin directory.
	BinDir string
	// Source is the plugin binary to install (in the agent's image); empty:
	// the binary is not installed, only checked for.
	Source string
	// Socket is the agent socket written into the entry.
	Socket string
	// StateDir, when set, is written into the entry: the plugin records
	// there the DELs the agent could not take (see cni.RecordDeleted).
	StateDir string
	Log      logr.Logger

	// op serializes Watch's passes with Uninstall and Resume, so that a
	// pass under way cannot chain the plugin again after Uninstall.
	op sync.Mutex
	// suspended is set by Uninstall and cleared by Resume: Watch installs
	// nothing meanwhile. resumed wakes Watch.
	suspended bool
	resumed   chan struct{}

	mu sync.Mutex
	// installed is the binary as last written or found identical to
	// Source, so that the periodic Install reads it again only if it
	// changed.
	installed fs.FileInfo
	// removeFile is atomicfile.Remove (tests watch the order of removals).
	removeFile func(string) (bool, error)
}

// Result says what Install, InstallBinary or Chain did.
type Result struct {
	// Path is the configuration file that chains nftguard: the runtime's
	// .conflist, or the one generated for its .conf.
	Path string
	// Changed is true if Path was written or a stale generated file
	// removed.
	Changed bool
	// BinaryChanged is true if the plugin binary was written.
	BinaryChanged bool
}

func (i *Installer) confDir() string { return cmp.Or(i.ConfDir, DefaultConfDir) }
func (i *Installer) binDir() string  { return cmp.Or(i.BinDir, DefaultBinDir) }
func (i *Installer) socket() string  { return cmp.Or(i.Socket, cni.DefaultSocket) }

// BinaryPath is where the plugin binary is installed.
func (i *Installer) BinaryPath() string { return filepath.Join(i.binDir(), cni.PluginType) }

func (i *Installer) remove(path string) (bool, error) {
	if i.removeFile != nil {
		return i.removeFile(path)
	}
	return atomicfile.Remove(path)
}

// Install installs the binary, then chains the entry: the runtime never
// finds an entry whose binary is missing.
func (i *Installer) Install() (Result, error) {
	changed, err := i.InstallBinary()
	if err != nil {
		return Result{}, err
	}
	res, err := i.Chain()
	res.BinaryChanged = changed
	return res, err
}

// InstallBinary copies Source to BinDir/nftguard, mode 0755, through a
// temporary file in BinDir renamed over the target, unless the target
// already has Source's content. It reports whether it wrote. With no
// Source it does nothing.
func (i *Installer) InstallBinary() (bool, error) {
	if i.Source == "" {
		return false, nil
	}
	dst := i.BinaryPath()
	i.mu.Lock()
	defer i.mu.Unlock()
	fi, err := os.Stat(dst)
	if err == nil && i.installed != nil && os.SameFile(fi, i.installed) &&
		fi.ModTime().Equal(i.installed.ModTime()) && fi.Size() == i.installed.Size() && fi.Mode() == i.installed.Mode() {
		return false, nil
	}
	want, err := os.ReadFile(i.Source)
	if err != nil {
		return false, fmt.Errorf("reading the CNI plugin to install: %w", err)
	}
	if have, err := os.ReadFile(dst); err == nil && fi != nil && bytes.Equal(have, want) && fi.Mode().Perm() == 0o755 {
		i.installed = fi
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, fmt.Errorf("creating the CNI bin directory: %w", err)
	}
	i.removeTemps(filepath.Dir(dst))
	if err := atomicfile.Write(dst, want, 0o755); err != nil {
		return false, fmt.Errorf("installing the CNI plugin: %w", err)
	}
	if i.installed, err = os.Stat(dst); err != nil {
		return true, fmt.Errorf("installing the CNI plugin: %w", err)
	}
	i.Log.Info("Installed the CNI plugin", "path", dst)
	return true, nil
}

// removeTemps removes the temporary files an interrupted write of ours
// left in dir.
func (i *Installer) removeTemps(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if atomicfile.IsTemp(e.Name()) {
			if _, err := i.remove(filepath.Join(dir, e.Name())); err != nil {
				i.Log.Error(err, "Removing an interrupted write", "path", filepath.Join(dir, e.Name()))
			}
		}
	}
}

// Watch runs Install now and every interval until ctx ends: when the pod
// network's installer rewrites its configuration without the entry, or
// the binary goes, Watch puts them back. report, if not nil, is called
// after each Install that changed something, and after each failure whose
// message differs from the previous one's (a lasting failure is reported
// once, and again after it cleared). Between Uninstall and Resume, Watch
// installs nothing; Resume wakes it at once.
func (i *Installer) Watch(ctx context.Context, interval time.Duration, report func(Result, error)) {
	if report == nil {
		report = func(Result, error) {}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	for {
		i.op.Lock()
		if i.resumed == nil {
			i.resumed = make(chan struct{}, 1)
		}
		resumed, suspended := i.resumed, i.suspended
		var res Result
		var err error
		if !suspended {
			res, err = i.Install()
		}
		i.op.Unlock()
		switch {
		case suspended:
		case err != nil:
			if err.Error() != lastErr {
				report(res, err)
			}
			lastErr = err.Error()
		default:
			lastErr = ""
			if res.Changed || res.BinaryChanged {
				report(res, nil)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-resumed:
		}
	}
}

// Uninstall removes the nftguard entries from every .conflist in ConfDir
// and deletes the files generated for a .conf, then removes the binary:
// in that order, so that the runtime never runs an entry whose binary is
// gone. It returns the paths it changed, in order. Watch installs nothing
// from then on, until Resume.
func (i *Installer) Uninstall() ([]string, error) {
	i.op.Lock()
	defer i.op.Unlock()
	i.suspended = true
	changed, err := i.unchain()
	if err != nil {
		return changed, err
	}
	removed, err := i.remove(i.BinaryPath())
	if err != nil {
		return changed, fmt.Errorf("removing the CNI plugin: %w", err)
	}
	if removed {
		changed = append(changed, i.BinaryPath())
		i.Log.Info("Removed the CNI plugin", "path", i.BinaryPath())
	}
	i.mu.Lock()
	i.installed = nil
	i.mu.Unlock()
	return changed, nil
}

// Resume undoes Uninstall's hold on Watch, which installs the plugin again
// at once. It reports whether Watch was held.
func (i *Installer) Resume() bool {
	i.op.Lock()
	defer i.op.Unlock()
	was := i.suspended
	i.suspended = false
	if was && i.resumed != nil {
		select {
		case i.resumed <- struct{}{}:
		default:
		}
	}
	return was
}

// ErrNoConfList is wrapped by Chain's error when ConfDir holds no network
// configuration yet (the pod network's installer has not run).
var ErrNoConfList = errors.New("no CNI network configuration")
