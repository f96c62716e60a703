package install

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/nftguard/nftguard/internal/cni"
	"github.com/nftguard/nftguard/internal/cni/atomicfile"
)

// Which configuration the runtime uses. containerd (go-cni's
// loadFromConfDir) and CRI-O (ocicni) list ConfDir with libcni.ConfFiles
// for the extensions .conf, .conflist and .json, sort the paths lexically,
// and take the first as the pod network (containerd's default
// max_conf_num is 1). A .conflist is loaded as a list
// (libcni.ConfListFromFile); a .conf or a .json is loaded as a single
// plugin (libcni.ConfFromFile, which must have a "type") and wrapped into
// a list of one. So a .json holding a "plugins" list is not a list to them:
// containerd refuses it. This package loads files the same way, with
// libcni itself.
var extensions = []string{".conf", ".conflist", ".json"}

// A single-plugin .conf (or .json) cannot hold a chain, so Chain leaves it
// alone and writes <stem>-nftguard.conflist beside it: the same network
// (name, cniVersion), whose plugins are the .conf's object, unchanged, and
// nftguard after it. Since "-" sorts before ".", that name comes just
// before the .conf's, so the runtime takes it first. The file names its
// source under generatedFromKey and sets loadOnlyInlinedPlugins, as the
// runtime's own wrapping of a .conf loads no plugin directory. Each Chain
// regenerates it from the source, so the pod network installer's rewrites
// of its .conf carry over, and removes it once its source is not the
// runtime's choice any more (deleted, replaced by a .conflist, or preceded
// by another file); Uninstall deletes it. Rewriting or renaming the pod
// network's own file instead would fight its installer, which owns that
// file; refusing to chain would leave such nodes without nftguard.
const (
	generatedSuffix  = "-nftguard.conflist"
	generatedFromKey = "nftguard.io/generatedFrom"
)

// Reasons of Status, for a CNIChained condition.
const (
	// ReasonChained: the runtime's configuration ends with nftguard.
	ReasonChained = "Chained"
	// ReasonNoConfList: ConfDir holds no network configuration.
	ReasonNoConfList = "NoConfList"
	// ReasonInvalidConfig: the runtime cannot load its first configuration.
	ReasonInvalidConfig = "InvalidConfig"
	// ReasonNotChained: the runtime's configuration does not end with an
	// nftguard entry for the agent's socket, or its CNI version is not one
	// the plugin speaks.
	ReasonNotChained = "NotChained"
	// ReasonBinaryMissing: the entry is there, the plugin binary is not.
	ReasonBinaryMissing = "BinaryMissing"
)

// Status says whether the runtime's network configuration chains nftguard.
type Status struct {
	Chained bool
	Reason  string
	Message string
	// Path is the configuration the runtime uses, if any.
	Path string
}

// confFiles returns ConfDir's configuration files in the runtime's order.
func (i *Installer) confFiles() ([]string, error) {
	files, err := libcni.ConfFiles(i.confDir(), extensions)
	if err != nil {
		return nil, fmt.Errorf("listing CNI configurations in %s: %w", i.confDir(), err)
	}
	sort.Strings(files)
	return files, nil
}

// load loads a configuration file as the runtime does.
func load(path string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(path, ".conflist") {
		return libcni.ConfListFromFile(path)
	}
	conf, err := libcni.ConfFromFile(path)
	if err != nil {
		return nil, err
	}
	if conf.Network.Type == "" {
		return nil, errors.New("no plugin \"type\" (a .conf or .json holds one plugin; a list needs the .conflist extension)")
	}
	return libcni.ConfListFromConf(conf)
}

// generatedSource returns the base name of the file a generated
// configuration was made from, or "" if path is not generated.
func generatedSource(path string) string {
	if !strings.HasSuffix(path, generatedSuffix) {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	o, err := parseObject(b)
	if err != nil {
		return ""
	}
	return o.getString(generatedFromKey)
}

// Chain makes the runtime's network configuration end with the nftguard
// entry {"type": "nftguard", "socket": Socket}: appended if missing, moved
// to the end (one only, the last one kept) if elsewhere, its socket set if
// different. Every other member and plugin keeps its value and order; the
// file is replaced atomically, and only if it changes. For a .conf see
// generatedSuffix. Chain refuses a configuration the runtime cannot load,
// one whose CNI version the plugin does not speak, and a list the runtime
// extends with plugin files of its network's directory (they would run
// after nftguard).
func (i *Installer) Chain() (Result, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	dir := i.confDir()
	i.removeTemps(dir)
	files, err := i.confFiles()
	if err != nil {
		return Result{}, err
	}
	var primary string
	var generated []string
	for _, f := range files {
		if generatedSource(f) != "" {
			generated = append(generated, f)
		} else if primary == "" {
			primary = f
		}
	}
	if primary == "" {
		removed, err := i.removeGenerated(generated, "")
		return Result{Changed: removed}, errors.Join(fmt.Errorf("%w in %s", ErrNoConfList, dir), err)
	}
	list, err := load(primary)
	if err != nil {
		return Result{}, fmt.Errorf("the runtime cannot load its network configuration %s, nftguard leaves it alone: %w", primary, err)
	}
	if !slices.Contains(cni.SupportedVersions, list.CNIVersion) {
		return Result{}, fmt.Errorf("network configuration %s has CNI version %q; nftguard's plugin speaks %s",
			primary, list.CNIVersion, strings.Join(cni.SupportedVersions, ", "))
	}
	fi, err := os.Stat(primary)
	if err != nil {
		return Result{}, err
	}
	raw, err := os.ReadFile(primary)
	if err != nil {
		return Result{}, err
	}
	target := primary
	var want []byte
	if strings.HasSuffix(primary, ".conflist") {
		want, err = i.chainList(primary, raw, list)
	} else {
		target = strings.TrimSuffix(primary, filepath.Ext(primary)) + generatedSuffix
		want, err = i.generate(primary, raw, list)
	}
	if err != nil {
		return Result{}, err
	}
	res := Result{Path: target}
	if have, err := os.ReadFile(target); want != nil && (err != nil || !bytes.Equal(have, want)) {
		if err := atomicfile.Write(target, want, fi.Mode().Perm()); err != nil {
			return res, fmt.Errorf("chaining the CNI plugin: %w", err)
		}
		res.Changed = true
		i.Log.Info("Chained the CNI plugin after the pod network", "path", target, "network", list.Name)
	}
	removed, err := i.removeGenerated(generated, target)
	res.Changed = res.Changed || removed
	return res, err
}

// chainList returns the .conflist with the entry last, or nil if it
// already is.
func (i *Installer) chainList(path string, raw []byte, list *libcni.NetworkConfigList) ([]byte, error) {
	o, err := parseObject(raw)
	if err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	var plugins []json.RawMessage
	if v, _ := o.get("plugins"); json.Unmarshal(v, &plugins) != nil || len(plugins) == 0 {
		return nil, fmt.Errorf("%s has no \"plugins\" list nftguard can join", path)
	}
	if len(list.Plugins) != len(plugins) {
		return nil, fmt.Errorf("the runtime adds the plugin files of %s to %s's list, after nftguard; "+
			"set \"loadOnlyInlinedPlugins\": true or move them into the list", filepath.Join(filepath.Dir(path), list.Name), path)
	}
	chained, changed, err := i.entryLast(plugins)
	if err != nil || !changed {
		return nil, err
	}
	return o.set("plugins", mustRaw(chained)).file(), nil
}

// generate returns the conflist generated for a single-plugin .conf.
func (i *Installer) generate(path string, raw []byte, list *libcni.NetworkConfigList) ([]byte, error) {
	if _, err := parseObject(raw); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	plugins, _, err := i.entryLast([]json.RawMessage{raw})
	if err != nil {
		return nil, err
	}
	return object{
		{"cniVersion", mustRaw(list.CNIVersion)},
		{"name", mustRaw(list.Name)},
		{generatedFromKey, mustRaw(filepath.Base(path))},
		{"loadOnlyInlinedPlugins", mustRaw(true)},
		{"plugins", mustRaw(plugins)},
	}.file(), nil
}

// entryLast returns the plugins without nftguard entries, followed by the
// last of them (its socket set) or a new one, and whether that differs
// from plugins.
func (i *Installer) entryLast(plugins []json.RawMessage) ([]json.RawMessage, bool, error) {
	var out []json.RawMessage
	var entry json.RawMessage
	for _, p := range plugins {
		if pluginType(p) == cni.PluginType {
			entry = p
			continue
		}
		out = append(out, p)
	}
	if entry == nil {
		o := object{{"type", mustRaw(cni.PluginType)}, {"socket", mustRaw(i.socket())}}
		if i.StateDir != "" {
			o = append(o, member{"stateDir", mustRaw(i.StateDir)})
		}
		entry = o.marshal()
	} else if o, err := parseObject(entry); err != nil {
		return nil, false, fmt.Errorf("decoding the nftguard entry: %w", err)
	} else if o.getString("socket") != i.socket() || (i.StateDir != "" && o.getString("stateDir") != i.StateDir) {
		o = o.set("socket", mustRaw(i.socket()))
		if i.StateDir != "" {
			o = o.set("stateDir", mustRaw(i.StateDir))
		}
		entry = o.marshal()
	}
	out = append(out, entry)
	changed := !slices.EqualFunc(out, plugins, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) })
	return out, changed, nil
}

func pluginType(p json.RawMessage) string {
	var t struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(p, &t)
	return t.Type
}

// removeGenerated removes the generated files but keep, and reports
// whether it removed any.
func (i *Installer) removeGenerated(generated []string, keep string) (bool, error) {
	var removed bool
	var errs []error
	for _, f := range generated {
		if f == keep {
			continue
		}
		ok, err := i.remove(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("removing stale %s: %w", f, err))
			continue
		}
		if ok {
			removed = true
			i.Log.Info("Removed a stale network configuration nftguard had generated", "path", f)
		}
	}
	return removed, errors.Join(errs...)
}

// Check reports whether the configuration the runtime uses now ends with
// the nftguard entry for Socket, and whether the binary is installed.
func (i *Installer) Check() Status {
	files, err := i.confFiles()
	if err != nil {
		return Status{Reason: ReasonInvalidConfig, Message: err.Error()}
	}
	if len(files) == 0 {
		return Status{Reason: ReasonNoConfList, Message: fmt.Sprintf("No CNI network configuration in %s yet", i.confDir())}
	}
	first := files[0]
	list, err := load(first)
	if err != nil {
		return Status{Reason: ReasonInvalidConfig, Path: first, Message: fmt.Sprintf("The runtime cannot load %s: %v", first, err)}
	}
	notChained := func(format string, args ...any) Status {
		return Status{Reason: ReasonNotChained, Path: first, Message: fmt.Sprintf(format, args...)}
	}
	last := list.Plugins[len(list.Plugins)-1]
	switch {
	case last.Network.Type != cni.PluginType && !strings.HasSuffix(first, ".conflist"):
		return notChained("%s is a single-plugin configuration; nftguard chains it through %s, which is not there yet",
			first, filepath.Base(strings.TrimSuffix(first, filepath.Ext(first))+generatedSuffix))
	case last.Network.Type != cni.PluginType:
		return notChained("The last plugin of %s is %q, not nftguard", first, last.Network.Type)
	case !slices.Contains(cni.SupportedVersions, list.CNIVersion):
		return notChained("%s has CNI version %q, which the nftguard plugin does not speak", first, list.CNIVersion)
	}
	o, err := parseObject(last.Bytes)
	if err != nil {
		return notChained("Decoding the nftguard entry of %s: %v", first, err)
	}
	if s := cmp.Or(o.getString("socket"), cni.DefaultSocket); s != i.socket() {
		return notChained("The nftguard entry of %s uses socket %s; the agent listens on %s", first, s, i.socket())
	}
	if fi, err := os.Stat(i.BinaryPath()); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return Status{Reason: ReasonBinaryMissing, Path: first, Message: fmt.Sprintf("%s chains nftguard, but %s is not an executable file", first, i.BinaryPath())}
	}
	return Status{Chained: true, Reason: ReasonChained, Path: first, Message: fmt.Sprintf("%s chains nftguard after the pod network %q", first, list.Name)}
}

// unchain removes the nftguard entries from every .conflist of ConfDir and
// deletes the generated ones.
func (i *Installer) unchain() ([]string, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	files, err := libcni.ConfFiles(i.confDir(), []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("listing CNI configurations in %s: %w", i.confDir(), err)
	}
	sort.Strings(files)
	var changed []string
	for _, f := range files {
		if generatedSource(f) != "" {
			if _, err := i.remove(f); err != nil {
				return changed, fmt.Errorf("removing %s: %w", f, err)
			}
			changed = append(changed, f)
			i.Log.Info("Removed the network configuration nftguard had generated", "path", f)
			continue
		}
		ok, err := i.withoutEntry(f)
		if err != nil {
			return changed, err
		}
		if ok {
			changed = append(changed, f)
			i.Log.Info("Removed the CNI plugin from the network configuration", "path", f)
		}
	}
	return changed, nil
}

// withoutEntry rewrites the .conflist at path without nftguard entries, if
// it has any.
func (i *Installer) withoutEntry(path string) (bool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	o, err := parseObject(raw)
	if err != nil {
		return false, nil // not ours to judge; it holds no entry we wrote
	}
	var plugins []json.RawMessage
	if v, _ := o.get("plugins"); json.Unmarshal(v, &plugins) != nil {
		return false, nil
	}
	kept := slices.DeleteFunc(slices.Clone(plugins), func(p json.RawMessage) bool { return pluginType(p) == cni.PluginType })
	if len(kept) == len(plugins) {
		return false, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	if err := atomicfile.Write(path, o.set("plugins", mustRaw(kept)).file(), fi.Mode().Perm()); err != nil {
		return false, fmt.Errorf("removing the CNI plugin from %s: %w", path, err)
	}
	return true, nil
}
