package image

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseCommandImage(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want CommandImage
	}{
		{"controller=./cmd/controller,user=65532:65532", CommandImage{
			Name: "controller", User: "65532:65532",
			Commands: []Command{{Dir: "./cmd/controller", Path: "/controller"}},
		}},
		{"pause=./test/images/pause", CommandImage{
			Name: "pause", User: "65532",
			Commands: []Command{{Dir: "./test/images/pause", Path: "/pause"}},
		}},
		{"agent=./cmd/agent+./cmd/nftguard,user=0:0", CommandImage{
			Name: "agent", User: "0:0",
			Commands: []Command{{Dir: "./cmd/agent", Path: "/agent"}, {Dir: "./cmd/nftguard", Path: "/nftguard"}},
		}},
		// The entrypoint option moves the first command only; the others
		// are named after their directories, trailing slash or not.
		{"tools=./cmd/a+./x/b/+../c,entrypoint=/usr/bin/a", CommandImage{
			Name: "tools", User: "65532",
			Commands: []Command{{Dir: "./cmd/a", Path: "/usr/bin/a"}, {Dir: "./x/b/", Path: "/b"}, {Dir: "../c", Path: "/c"}},
		}},
	} {
		got, err := ParseCommandImage(tc.arg)
		if err != nil {
			t.Errorf("%s: %v", tc.arg, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.arg, got, tc.want)
		}
		if ep := got.Entrypoint(); len(ep) != 1 || ep[0] != tc.want.Commands[0].Path {
			t.Errorf("%s: entrypoint %q, want the first command's path", tc.arg, ep)
		}
	}
}

func TestParseCommandImageRejects(t *testing.T) {
	for arg, want := range map[string]string{
		"agent":                                 "want NAME=DIR",
		"=./cmd/agent":                          "want NAME=DIR",
		"agent=":                                "want NAME=DIR",
		"a/b=./cmd/agent":                       "want NAME=DIR",
		"agent=./cmd/agent+":                    "empty command directory",
		"agent=+./cmd/nftguard":                 "empty command directory",
		"agent=./cmd/agent+.":                   "does not name its binary",
		"agent=./cmd/agent+./cmd/x/agent":       "both be installed as /agent",
		"agent=./cmd/agent+./a/tool+./b/tool":   "both be installed as /tool",
		"x=./cmd/x+./cmd/y,entrypoint=/y":       "both be installed as /y",
		"agent=./cmd/agent,user=root":           "must be numeric",
		"agent=./cmd/agent,entrypoint=agent":    "clean absolute path",
		"agent=./cmd/agent,entrypoint=/a/../b":  "clean absolute path",
		"agent=./cmd/agent,platform=linux/s390": "unknown option",
	} {
		_, err := ParseCommandImage(arg)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one saying %q", arg, err, want)
		}
	}
}

// TestBuildCommandImage builds an image of two commands: both binaries are
// in the image's own layer for each platform, each its platform's build,
// and the first is the entrypoint.
func TestBuildCommandImage(t *testing.T) {
	ci, err := ParseCommandImage("agent=./cmd/agent+./cmd/nftguard,user=0:0")
	if err != nil {
		t.Fatal(err)
	}
	var builds []string
	spec := testSpec(t)
	spec.Entrypoint, spec.User = ci.Entrypoint(), ci.User
	spec.Files = ci.Files(func(c Command, p Platform) ([]byte, error) {
		builds = append(builds, c.Dir+" "+p.String())
		return []byte(c.Dir + " for " + p.String()), nil
	})
	idx, err := Build(spec, twoPlatforms)
	if err != nil {
		t.Fatal(err)
	}
	wantBuilds := []string{"./cmd/agent linux/amd64", "./cmd/nftguard linux/amd64", "./cmd/agent linux/arm64", "./cmd/nftguard linux/arm64"}
	if !reflect.DeepEqual(builds, wantBuilds) {
		t.Errorf("built %q, want %q", builds, wantBuilds)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != len(twoPlatforms) {
		t.Fatalf("%d manifests, want %d", len(m.Manifests), len(twoPlatforms))
	}
	for i, d := range m.Manifests {
		p := twoPlatforms[i]
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(cf.Config.Entrypoint, []string{"/agent"}) || cf.Config.User != "0:0" {
			t.Errorf("%s: entrypoint %q user %q, want /agent as 0:0", p, cf.Config.Entrypoint, cf.Config.User)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 2 {
			t.Fatalf("%s: %d layers, %v; want base and own", p, len(layers), err)
		}
		own := layerEntries(t, layers[1])
		if len(own) != 2 {
			names := make([]string, 0, len(own))
			for n := range own {
				names = append(names, n)
			}
			t.Errorf("%s: own layer holds %q, want agent and nftguard only", p, names)
		}
		for name, dir := range map[string]string{"agent": "./cmd/agent", "nftguard": "./cmd/nftguard"} {
			e, ok := own[name]
			if !ok {
				t.Errorf("%s: /%s missing from the image", p, name)
				continue
			}
			if want := dir + " for " + p.String(); e.data != want || e.hdr.Mode != 0o755 || e.hdr.Uid != 0 {
				t.Errorf("%s: /%s = %q mode %o uid %d; want %q, 0755, root", p, name, e.data, e.hdr.Mode, e.hdr.Uid, want)
			}
		}
	}
}

func TestCommandImageFilesFails(t *testing.T) {
	ci, err := ParseCommandImage("agent=./cmd/agent+./cmd/nftguard")
	if err != nil {
		t.Fatal(err)
	}
	broken := errors.New("no such package")
	files := ci.Files(func(c Command, p Platform) ([]byte, error) {
		if c.Path == "/nftguard" {
			return nil, broken
		}
		return []byte("elf"), nil
	})
	if _, err := files(twoPlatforms[0]); !errors.Is(err, broken) {
		t.Fatalf("a failed build of the second command gave %v", err)
	}
}
