package nftnl

import "github.com/nftguard/nftguard/internal/dataplane/model"

// opBytes estimates the netlink size of a change.
func opBytes(o model.Op) int {
	const header = 64
	switch o.Kind {
	case model.OpAddSet:
		return header + elementsBytes(o.Set.Kind, o.Set.Elements)
	case model.OpAddElements, model.OpDelElements:
		return header + elementsBytes(o.Set.Kind, o.Elems)
	case model.OpAddRule, model.OpInsertRule:
		return header + 96*len(o.Rule.Stmts)
	}
	return header
}

// elementsBytes estimates the netlink size of elements, from above: an
// interval is counted with its end element even when it runs to the last
// address and has none.
func elementsBytes(k model.SetKind, es []model.Element) int {
	n := 0
	for i := range es {
		e := &es[i]
		one := 4 + 8 + align4(len(e.Key)) // element, key nest, value
		switch {
		case k.IsRBTree():
			one += one + 8 // the end element, flagged
		case k == model.SetPorts || k == model.MapPortsVerdict:
			one += 8 + align4(len(e.KeyEnd))
		}
		if k == model.MapPortsVerdict || e.Verdict != nil {
			chain := 0
			if e.Verdict != nil {
				chain = len(e.Verdict.Chain)
			}
			one += 4 + 4 + 8 + 4 + align4(chain+1)
		}
		n += one
	}
	return n
}

// splittable reports whether element changes of a set may be committed
// apart from the rest of a plan: sets of single values, where adding early
// or removing late only widens the set for a moment.
func splittable(k model.SetKind) bool {
	return k == model.SetIPv4 || k == model.SetIPv6 || k == model.SetEndpointIPv4 || k == model.SetEndpointIPv6 || k == model.SetTaggedIPv4 || k == model.SetTaggedIPv6
}

// splitPlan returns the plan as one batch when it fits maxBytes. Otherwise
// (and unless the plan rebuilds) it moves additions to and removals from
// splittable sets into batches of their own, before and after the one that
// carries everything else; see Programmer.
func splitPlan(pl *model.Plan, maxBytes int) [][]model.Op {
	total := 0
	for _, o := range pl.Ops {
		total += opBytes(o)
	}
	if total <= maxBytes || pl.Rebuild {
		return [][]model.Op{pl.Ops}
	}
	var early, main, late []model.Op
	for _, o := range pl.Ops {
		switch {
		case o.Kind == model.OpAddTable:
			early = append(early, o)
		case o.Kind == model.OpAddSet && splittable(o.Set.Kind):
			def := *o.Set
			def.Elements = nil
			early = append(early, model.Op{Kind: model.OpAddSet, Name: o.Name, Set: &def, Capacity: o.Capacity})
			early = append(early, elementOps(model.OpAddElements, o.Name, o.Set, o.Set.Elements, maxBytes)...)
		case o.Kind == model.OpAddElements && splittable(o.Set.Kind):
			early = append(early, elementOps(model.OpAddElements, o.Name, o.Set, o.Elems, maxBytes)...)
		case o.Kind == model.OpDelElements && splittable(o.Set.Kind):
			late = append(late, elementOps(model.OpDelElements, o.Name, o.Set, o.Elems, maxBytes)...)
		default:
			main = append(main, o)
		}
	}
	batches := packOps(early, maxBytes)
	if len(main) > 0 {
		batches = append(batches, main)
	}
	return append(batches, packOps(late, maxBytes)...)
}

// elementOps cuts one element change into changes of at most a quarter of
// maxBytes each.
func elementOps(kind model.OpKind, name string, s *model.Set, elems []model.Element, maxBytes int) []model.Op {
	var out []model.Op
	start, size := 0, 0
	for i, e := range elems {
		n := elementsBytes(s.Kind, []model.Element{e})
		if size+n > maxBytes/4 && i > start {
			out = append(out, model.Op{Kind: kind, Name: name, Set: s, Elems: elems[start:i]})
			start, size = i, 0
		}
		size += n
	}
	if start < len(elems) {
		out = append(out, model.Op{Kind: kind, Name: name, Set: s, Elems: elems[start:]})
	}
	return out
}

// packOps groups changes, in order, into batches of at most maxBytes.
func packOps(ops []model.Op, maxBytes int) [][]model.Op {
	var out [][]model.Op
	var cur []model.Op
	size := 0
	for _, o := range ops {
		n := opBytes(o)
		if size+n > maxBytes && len(cur) > 0 {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, o)
		size += n
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
