package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/testr"
	"github.com/google/go-cmp/cmp"

	"github.com/nftguard/nftguard/internal/cni"
)

// plugin is the binary under test, built once by TestMain.
var plugin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "no go tool to build the plugin:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "nftguard-plugin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	plugin = filepath.Join(dir, "nftguard")
	out, err := exec.Command(goTool, "build", "-o", plugin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the plugin: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// agent is an agent's stand-in: a server whose Handler keeps a Registry.
type agent struct {
	socket  string
	reg     *cni.Registry
	handler *registryHandler
}

// registryHandler keeps attachments in a Registry; ADD fails with refuse
// when set.
type registryHandler struct {
	reg    *cni.Registry
	mu     sync.Mutex
	refuse error
}

func (h *registryHandler) refuseAdd(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.refuse = err
}

func (h *registryHandler) Add(_ context.Context, a cni.Attachment) error {
	h.mu.Lock()
	refuse := h.refuse
	h.mu.Unlock()
	if refuse != nil {
		return refuse
	}
	return h.reg.Add(a)
}
func (h *registryHandler) Del(_ context.Context, a cni.Attachment) error {
	_, err := h.reg.Del(a.Key())
	return err
}
func (h *registryHandler) Check(_ context.Context, a cni.Attachment) error { return h.reg.Check(a) }
func (h *registryHandler) GC(_ context.Context, valid []cni.AttachmentKey) error {
	_, err := h.reg.GC(valid)
	return err
}

func startAgent(t *testing.T) *agent {
	t.Helper()
	dir := t.TempDir()
	reg, err := cni.OpenRegistry(filepath.Join(dir, "attachments"), testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "run", "cni.sock")
	h := &registryHandler{reg: reg}
	srv, err := cni.Listen(socket, h, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &agent{socket: socket, reg: reg, handler: h}
}

// ptpResult is a result as the ptp plugin with host-local returns it: the
// host veth first, the sandbox's eth0 second, both addresses on eth0.
const ptpResult = `{
  "cniVersion": "1.1.0",
  "interfaces": [
    {"name": "veth3c9a1b2e", "mac": "4a:1f:2b:3c:4d:5e"},
    {"name": "eth0", "mac": "a2:b3:c4:d5:e6:f7", "sandbox": "/var/run/netns/cni-1234"}
  ],
  "ips": [
    {"interface": 1, "address": "198.18.0.5/24", "gateway": "198.18.0.1"},
    {"interface": 1, "address": "fd00:198:18::5/64", "gateway": "fd00:198:18::1"}
  ],
  "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}, {"dst": "::/0", "gw": "fd00:198:18::1"}],
  "dns": {}
}`

// config returns the configuration a runtime passes the plugin, with
// prevResult if not empty.
func config(t *testing.T, version, socket, prevResult string) []byte {
	t.Helper()
	conf := map[string]any{"cniVersion": version, "name": "pods", "type": "nftguard", "socket": socket}
	if prevResult != "" {
		conf["prevResult"] = json.RawMessage(prevResult)
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// request is one execution of the plugin, as a runtime makes it.
type request struct {
	command, containerID, ifName, args string
	conf                               []byte
}

type outcome struct {
	code           int
	stdout, stderr string
}

// cniError decodes the error result on stdout.
func (o outcome) cniError(t *testing.T) (uint, string) {
	t.Helper()
	var e struct {
		Code    uint   `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &e); err != nil {
		t.Fatalf("stdout is not an error result: %v\n%s", err, o.stdout)
	}
	return e.Code, e.Msg + "; " + e.Details
}

func podArgsFor(uid string) string {
	// containerd passes these, with IgnoreUnknown=1; leave that out and add
	// an argument nobody knows, which the plugin must tolerate.
	return "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=" + uid + ";SOMETHING_ELSE=1"
}

func exec1(t *testing.T, r request) outcome {
	t.Helper()
	if r.containerID == "" {
		r.containerID = "sandbox1"
	}
	if r.ifName == "" {
		r.ifName = "eth0"
	}
	cmd := exec.Command(plugin)
	cmd.Env = []string{
		"CNI_COMMAND=" + r.command,
		"CNI_CONTAINERID=" + r.containerID,
		// Not a namespace this test could enter: the plugin never enters it.
		"CNI_NETNS=/var/run/netns/cni-1234",
		"CNI_IFNAME=" + r.ifName,
		"CNI_ARGS=" + r.args,
		"CNI_PATH=/opt/cni/bin",
	}
	cmd.Stdin = bytes.NewReader(r.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running the plugin: %v", err)
	}
	return outcome{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

func mustSucceed(t *testing.T, what string, o outcome) {
	t.Helper()
	if o.code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, o.code, o.stdout, o.stderr)
	}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestAddTellsTheAgentAndPassesTheResultOn(t *testing.T) {
	ag := startAgent(t)
	o := exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", ag.socket, ptpResult)})
	mustSucceed(t, "ADD", o)

	want := cni.Attachment{
		ContainerID: "sandbox1", IfName: "eth0", PodUID: "uid-1", Namespace: "shop", Name: "web-0",
		IPs: addrs("198.18.0.5", "fd00:198:18::5"), Netns: "/var/run/netns/cni-1234", HostInterfaces: []string{"veth3c9a1b2e"},
	}
	got, ok := ag.reg.Get(want.Key())
	if !ok {
		t.Fatal("the agent has no attachment after ADD")
	}
	if diff := cmp.Diff(want, got, addrCmp); diff != "" {
		t.Errorf("attachment (-want +got):\n%s", diff)
	}
	var printed, prev map[string]any
	if err := json.Unmarshal([]byte(o.stdout), &printed); err != nil {
		t.Fatalf("ADD printed no result: %v\n%s", err, o.stdout)
	}
	if err := json.Unmarshal([]byte(ptpResult), &prev); err != nil {
		t.Fatal(err)
	}
	delete(prev, "dns") // an empty dns object is left out when printed
	if diff := cmp.Diff(prev, printed); diff != "" {
		t.Errorf("ADD's result is not the prevResult (-prevResult +printed):\n%s", diff)
	}
}

// ptpResult040 is ptpResult as a 0.4.0 plugin returns it.
const ptpResult040 = `{
  "cniVersion": "0.4.0",
  "interfaces": [
    {"name": "veth3c9a1b2e", "mac": "4a:1f:2b:3c:4d:5e"},
    {"name": "eth0", "mac": "a2:b3:c4:d5:e6:f7", "sandbox": "/var/run/netns/cni-1234"}
  ],
  "ips": [
    {"version": "4", "interface": 1, "address": "198.18.0.5/24", "gateway": "198.18.0.1"},
    {"version": "6", "interface": 1, "address": "fd00:198:18::5/64", "gateway": "fd00:198:18::1"}
  ]
}`

func TestAddPrintsTheResultInTheConfigVersion(t *testing.T) {
	for _, tc := range []struct {
		confVersion, prev string
		wantIPVersion     []string // 0.4.0 results say each address's IP version; 1.x ones do not
	}{
		{"0.4.0", ptpResult040, []string{"4", "6"}},
		{"1.0.0", strings.Replace(ptpResult, `"1.1.0"`, `"1.0.0"`, 1), []string{"", ""}},
		{"1.1.0", ptpResult, []string{"", ""}},
	} {
		t.Run(tc.confVersion, func(t *testing.T) {
			ag := startAgent(t)
			o := exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, tc.confVersion, ag.socket, tc.prev)})
			mustSucceed(t, "ADD", o)
			var printed struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []struct {
					Version string `json:"version"`
					Address string `json:"address"`
				} `json:"ips"`
			}
			if err := json.Unmarshal([]byte(o.stdout), &printed); err != nil {
				t.Fatal(err)
			}
			var versions, addresses []string
			for _, ip := range printed.IPs {
				versions = append(versions, ip.Version)
				addresses = append(addresses, ip.Address)
			}
			if printed.CNIVersion != tc.confVersion || !slices.Equal(versions, tc.wantIPVersion) ||
				!slices.Equal(addresses, []string{"198.18.0.5/24", "fd00:198:18::5/64"}) {
				t.Errorf("result printed for a %s configuration: %s", tc.confVersion, o.stdout)
			}
			if got, _ := ag.reg.Get(cni.AttachmentKey{ContainerID: "sandbox1", IfName: "eth0"}); len(got.IPs) != 2 {
				t.Errorf("attachment holds %v, want both addresses", got.IPs)
			}
		})
	}
}

func TestAddSkipsHostSideAddresses(t *testing.T) {
	ag := startAgent(t)
	withHost := strings.Replace(ptpResult, `"ips": [`, `"ips": [
    {"interface": 0, "address": "198.18.0.1/32"},`, 1)
	mustSucceed(t, "ADD", exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", ag.socket, withHost)}))
	got, _ := ag.reg.Get(cni.AttachmentKey{ContainerID: "sandbox1", IfName: "eth0"})
	if !slices.Equal(got.IPs, addrs("198.18.0.5", "fd00:198:18::5")) {
		t.Errorf("attachment holds %v, want only the sandbox's addresses", got.IPs)
	}
}

// TestAddReportsHostInterfaces: every interface the result puts on the
// host (a bridge and the host end of the veth, as the bridge plugin
// returns them) reaches the agent; a result naming an interface Linux
// could not have fails ADD.
func TestAddReportsHostInterfaces(t *testing.T) {
	ag := startAgent(t)
	bridge := strings.Replace(ptpResult, `"interfaces": [`, `"interfaces": [
    {"name": "cni0", "mac": "4a:1f:2b:3c:4d:00"},`, 1)
	bridge = strings.ReplaceAll(bridge, `"interface": 1`, `"interface": 2`)
	mustSucceed(t, "ADD", exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", ag.socket, bridge)}))
	got, _ := ag.reg.Get(cni.AttachmentKey{ContainerID: "sandbox1", IfName: "eth0"})
	if !slices.Equal(got.HostInterfaces, []string{"cni0", "veth3c9a1b2e"}) || !slices.Equal(got.IPs, addrs("198.18.0.5", "fd00:198:18::5")) {
		t.Errorf("attachment holds host interfaces %v and addresses %v, want cni0, veth3c9a1b2e and the sandbox's", got.HostInterfaces, got.IPs)
	}

	bad := strings.Replace(ptpResult, `"veth3c9a1b2e"`, `"a-name-far-too-long"`, 1)
	o := exec1(t, request{command: "ADD", args: podArgsFor("uid-2"), conf: config(t, "1.1.0", ag.socket, bad)})
	if o.code == 0 || !strings.Contains(o.stdout, "a-name-far-too-long") {
		t.Errorf("ADD with an invalid host interface name: exit %d, %s", o.code, o.stdout)
	}
}

func TestAddTakesEveryAddressWithoutInterfaceIndices(t *testing.T) {
	ag := startAgent(t)
	noIndex := `{"cniVersion": "1.0.0", "ips": [{"address": "198.18.0.7/24"}, {"address": "fd00:198:18::7/64"}]}`
	mustSucceed(t, "ADD", exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.0.0", ag.socket, noIndex)}))
	got, _ := ag.reg.Get(cni.AttachmentKey{ContainerID: "sandbox1", IfName: "eth0"})
	if !slices.Equal(got.IPs, addrs("198.18.0.7", "fd00:198:18::7")) {
		t.Errorf("attachment holds %v, want every address of the result", got.IPs)
	}
}

func TestAddNeedsPrevResult(t *testing.T) {
	ag := startAgent(t)
	o := exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", ag.socket, "")})
	if o.code == 0 {
		t.Fatal("ADD without prevResult succeeded")
	}
	if _, msg := o.cniError(t); !strings.Contains(msg, "nftguard must be chained after the pod network plugin") {
		t.Errorf("error %q does not say nftguard must be chained", msg)
	}
	if n := len(ag.reg.Snapshot()); n != 0 {
		t.Errorf("agent holds %d attachments", n)
	}
}

func TestAddNeedsPodUID(t *testing.T) {
	ag := startAgent(t)
	o := exec1(t, request{command: "ADD", args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0", conf: config(t, "1.1.0", ag.socket, ptpResult)})
	if o.code == 0 {
		t.Fatal("ADD without K8S_POD_UID succeeded")
	}
	if _, msg := o.cniError(t); !strings.Contains(msg, "K8S_POD_UID") {
		t.Errorf("error %q does not name K8S_POD_UID", msg)
	}
}

func TestAddFailsWhileTheAgentIsDown(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock") // nobody listens
	o := exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", socket, ptpResult)})
	if o.code == 0 {
		t.Fatal("ADD succeeded with no agent")
	}
	code, msg := o.cniError(t)
	if code != 11 || !strings.Contains(msg, socket) {
		t.Errorf("error %d %q; want code 11 (try again later) naming %s", code, msg, socket)
	}
}

func TestAddReportsTheAgentsRefusal(t *testing.T) {
	ag := startAgent(t)
	ag.handler.refuseAdd(errors.New("pod uid-1 is not scheduled on this node"))
	o := exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", ag.socket, ptpResult)})
	if o.code == 0 {
		t.Fatal("ADD the agent refused succeeded")
	}
	if code, msg := o.cniError(t); code != 999 || !strings.Contains(msg, "pod uid-1 is not scheduled on this node") {
		t.Errorf("error %d %q; want the agent's refusal with code 999", code, msg)
	}
}

func TestDelTwice(t *testing.T) {
	ag := startAgent(t)
	conf := config(t, "1.1.0", ag.socket, ptpResult)
	mustSucceed(t, "ADD", exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: conf}))
	mustSucceed(t, "first DEL", exec1(t, request{command: "DEL", args: podArgsFor("uid-1"), conf: conf}))
	if n := len(ag.reg.Snapshot()); n != 0 {
		t.Fatalf("agent holds %d attachments after DEL", n)
	}
	// Runtimes repeat DEL, and may send it without prevResult or CNI_ARGS.
	mustSucceed(t, "second DEL", exec1(t, request{command: "DEL", conf: config(t, "1.1.0", ag.socket, "")}))
}

func TestDelSucceedsWhileTheAgentIsDown(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	o := exec1(t, request{command: "DEL", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", socket, ptpResult)})
	mustSucceed(t, "DEL with no agent", o)
	if !strings.Contains(o.stderr, socket) {
		t.Errorf("stderr %q does not say the agent at %s was not reachable", o.stderr, socket)
	}
}

// TestDelRecordedWhileTheAgentIsDown: with the agent's state directory in
// its configuration, a DEL the agent cannot take is recorded there, and the
// agent's replay forgets the attachment.
func TestDelRecordedWhileTheAgentIsDown(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "registry")
	reg, err := cni.OpenRegistry(dir, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	// The ADD, taken before the agent went.
	a := cni.Attachment{ContainerID: "sandbox1", IfName: "eth0", PodUID: "uid-1", IPs: []netip.Addr{netip.MustParseAddr("198.18.0.5")}}
	if err := reg.Add(a); err != nil {
		t.Fatal(err)
	}
	conf := map[string]any{}
	if err := json.Unmarshal(config(t, "1.1.0", filepath.Join(t.TempDir(), "cni.sock"), ptpResult), &conf); err != nil {
		t.Fatal(err)
	}
	conf["stateDir"] = dir
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	mustSucceed(t, "DEL with no agent", exec1(t, request{command: "DEL", args: podArgsFor("uid-1"), conf: b}))
	gone, err := reg.ReplayDeleted()
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 1 || gone[0].Key() != a.Key() || len(reg.Snapshot()) != 0 {
		t.Errorf("replay forgot %v and left %v, want %s forgotten", gone, reg.Snapshot(), a.Key())
	}
}

func TestCheck(t *testing.T) {
	ag := startAgent(t)
	conf := config(t, "1.1.0", ag.socket, ptpResult)
	if o := exec1(t, request{command: "CHECK", args: podArgsFor("uid-1"), conf: conf}); o.code == 0 {
		t.Error("CHECK of an attachment the agent never heard of succeeded")
	}
	mustSucceed(t, "ADD", exec1(t, request{command: "ADD", args: podArgsFor("uid-1"), conf: conf}))
	mustSucceed(t, "CHECK", exec1(t, request{command: "CHECK", args: podArgsFor("uid-1"), conf: conf}))

	other := config(t, "1.1.0", ag.socket, strings.Replace(ptpResult, "198.18.0.5/24", "198.18.0.6/24", 1))
	o := exec1(t, request{command: "CHECK", args: podArgsFor("uid-1"), conf: other})
	if o.code == 0 {
		t.Fatal("CHECK with addresses the agent does not hold succeeded")
	}
	if _, msg := o.cniError(t); !strings.Contains(msg, "198.18.0.6") {
		t.Errorf("CHECK error %q does not say which addresses differ", msg)
	}
	if o := exec1(t, request{command: "CHECK", args: podArgsFor("uid-1"), conf: config(t, "1.1.0", ag.socket, "")}); o.code == 0 {
		t.Error("CHECK without prevResult succeeded")
	}
}

func TestGC(t *testing.T) {
	ag := startAgent(t)
	for i, id := range []string{"keep", "stale"} {
		prev := strings.Replace(ptpResult, "198.18.0.5/24", fmt.Sprintf("198.18.0.%d/24", 10+i), 1)
		prev = strings.Replace(prev, "fd00:198:18::5/64", fmt.Sprintf("fd00:198:18::%d/64", 10+i), 1)
		mustSucceed(t, "ADD "+id, exec1(t, request{command: "ADD", containerID: id, args: podArgsFor("uid-" + id), conf: config(t, "1.1.0", ag.socket, prev)}))
	}
	conf := map[string]any{
		"cniVersion": "1.1.0", "name": "pods", "type": "nftguard", "socket": ag.socket,
		"cni.dev/valid-attachments": []map[string]string{{"containerID": "keep", "ifname": "eth0"}},
	}
	b, _ := json.Marshal(conf)
	mustSucceed(t, "GC", exec1(t, request{command: "GC", conf: b}))
	var left []string
	for _, a := range ag.reg.Snapshot() {
		left = append(left, a.ContainerID)
	}
	if !slices.Equal(left, []string{"keep"}) {
		t.Errorf("attachments after GC: %v, want [keep]", left)
	}
}

func TestStatus(t *testing.T) {
	ag := startAgent(t)
	mustSucceed(t, "STATUS", exec1(t, request{command: "STATUS", conf: config(t, "1.1.0", ag.socket, "")}))

	socket := filepath.Join(t.TempDir(), "cni.sock")
	o := exec1(t, request{command: "STATUS", conf: config(t, "1.1.0", socket, "")})
	if o.code == 0 {
		t.Fatal("STATUS succeeded with no agent")
	}
	if code, msg := o.cniError(t); code != 50 || !strings.Contains(msg, socket) {
		t.Errorf("STATUS error %d %q; want code 50 naming %s", code, msg, socket)
	}
}

func TestVersion(t *testing.T) {
	o := exec1(t, request{command: "VERSION"})
	mustSucceed(t, "VERSION", o)
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &v); err != nil {
		t.Fatal(err)
	}
	if want := []string{"0.4.0", "1.0.0", "1.1.0"}; !slices.Equal(v.Supported, want) {
		t.Errorf("supported versions %v, want %v", v.Supported, want)
	}
}

func TestInvalidTimeout(t *testing.T) {
	conf := []byte(`{"cniVersion": "1.1.0", "name": "pods", "type": "nftguard", "timeout": "soon"}`)
	o := exec1(t, request{command: "STATUS", conf: conf})
	if o.code == 0 {
		t.Fatal("a configuration with timeout \"soon\" was accepted")
	}
	if _, msg := o.cniError(t); !strings.Contains(msg, "soon") {
		t.Errorf("error %q does not name the bad timeout", msg)
	}
}

// The plugin runs for every pod sandbox: it must stay a small binary,
// without the Kubernetes client libraries.
func TestPluginImportsNoKubernetesLibraries(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range []string{"k8s.io/", "sigs.k8s.io/", "github.com/prometheus/", "google.golang.org/protobuf"} {
			if strings.HasPrefix(pkg, heavy) {
				t.Errorf("the plugin imports %s", pkg)
			}
		}
	}
}
