"""The checker rejects broken plans with the right witness and accepts the decisions' cases."""

import pytest

from gatelink.plan import (RDOS_POLICY, SYNC, FetchModel, Order, PatchSite, Plan, PlanError, Write, check,
                           make_site)
from gatelink.plan.export import instance

ARB1 = FetchModel(1, Order.ARBITRARY)
ARB8 = FetchModel(8, Order.ARBITRARY)
MONO8 = FetchModel(8, Order.MONOTONE)
ARB64 = FetchModel(64, Order.ARBITRARY)
CTX = bytes.fromhex("730433c0eb05b801000000c390909090")


def site(orig: str, final: str, address: int = 0x1000, bits: int = 32) -> PatchSite:
    return PatchSite("A", bits, address, tuple(bytes.fromhex(orig)), tuple(bytes.fromhex(final)), tuple(CTX), {})


def W(off: int, hexdata: str) -> Write:
    return Write(off, tuple(bytes.fromhex(hexdata)))


A_ORIG = "3e679a2301000002 00"
A_FINAL = "3e679a4023010008 04"


def test_lone_cmc_is_a_stray_effect():
    s = site(A_ORIG, A_FINAL, 0x1004)
    plan = Plan((W(0, "f5"), W(3, "40230100"), W(7, "0804"), W(0, "3e")))
    r = check(s, plan, ARB64, RDOS_POLICY)
    assert not r.safe
    assert r.witness.reason == "stray effect"
    assert r.witness.last.text == "cmc"
    assert r.witness.last.address == 0x1004


def test_offset_written_after_the_selector_enables_the_call():
    s = site(A_ORIG, A_FINAL, 0x1004)
    plan = Plan((W(7, "0804"), W(3, "40230100")))
    r = check(s, plan, ARB64, RDOS_POLICY)
    assert not r.safe and r.witness.reason == "wrong call"
    # The core saw the new selector with the old offset (the gate number 0x123).
    assert "0x408:00000123" in r.witness.detail
    assert r.witness.last.states == (1,)
    # Offset first, then selector: safe under the same model.
    assert check(s, Plan((W(3, "40230100"), W(7, "0804"))), ARB64, RDOS_POLICY).safe


def test_one_store_across_a_chunk_boundary_tears_under_arbitrary():
    # Site at 0x1000: bytes 1..8 span chunks [0x1000,0x1008) and [0x1008,0x1010).
    s = site(A_ORIG, A_FINAL, 0x1000)
    plan = Plan((W(1, "679a402301000804"),))
    r = check(s, plan, ARB8, RDOS_POLICY)
    assert not r.safe and r.witness.reason == "wrong call"
    states = r.witness.last.states
    assert len(states) == 2 and states[0] != states[1]  # a torn view
    # Moved so the changed bytes share one chunk, the same store is safe.
    s2 = site(A_ORIG, A_FINAL, 0x1005)
    assert check(s2, plan, ARB8, RDOS_POLICY).safe


def test_monotone_allows_what_arbitrary_forbids():
    # CC, sync, selector high byte (chunk 1), then chunk 0 restored with offset and selector low.
    s = site(A_ORIG, A_FINAL, 0x1000)
    plan = Plan((W(0, "cc"), SYNC, W(8, "04"), W(0, "3e679a4023010008")))
    assert check(s, plan, MONO8, RDOS_POLICY).safe
    r = check(s, plan, ARB8, RDOS_POLICY)
    assert not r.safe
    # The arbitrary-order witness reads the low chunk newer than the high one.
    assert r.witness.last.states[0] > r.witness.last.states[1]


def test_rdos_order_with_and_without_syncs_under_1_arbitrary():
    s = site(A_ORIG, "90679a402301000804")
    broken = Plan((W(0, "cd"), W(3, "40230100"), W(7, "0804"), W(0, "90")))
    r = check(s, broken, ARB1, RDOS_POLICY)
    assert not r.safe and r.witness.reason == "wrong call"
    fixed = Plan((W(0, "cd"), SYNC, W(3, "40230100"), W(7, "0804"), SYNC, W(0, "90")))
    assert check(s, fixed, ARB1, RDOS_POLICY).safe


def test_int_n_resumes_at_its_opcode_byte():
    # "3E CD 67": INT 67h with a DS prefix; the handler backs up 2 from the return address to
    # the CD byte (offset 1), where the final code runs "67 9A off sel": the same call.
    s = site(A_ORIG, A_FINAL)
    plan = Plan((W(1, "cd"), SYNC, W(3, "40230100"), W(7, "0804"), SYNC, W(1, "67")))
    assert check(s, plan, ARB1, RDOS_POLICY).safe


def test_shape_g_push_then_trap_resumes_after_the_push():
    s = site("55679a2301000003005d", "55679a40230100080 45d".replace(" ", ""))
    plan = Plan((W(1, "cc"), SYNC, W(3, "40230100"), W(7, "0804"), SYNC, W(1, "67")))
    r = check(s, plan, ARB1, RDOS_POLICY)
    assert r.safe
    # The breakpoint over the push instead: a core that ran the push before the breakpoint
    # landed is past it, and fetches the call while its selector tears.
    bad = Plan((W(0, "cc"), SYNC, W(3, "40230100"), W(7, "0804"), SYNC, W(0, "55")))
    r2 = check(s, bad, ARB1, RDOS_POLICY)
    assert not r2.safe and r2.witness.reason == "wrong call"
    assert r2.witness.fetches[0].text == "push ebp" and r2.witness.last.address == 0x1001


def test_an_unattributable_fault_is_a_violation():
    from gatelink.decode import decode_view

    assert decode_view(bytes.fromhex("0f04679a"), 32, 0) is None  # an undefined opcode, not UD2
    s = site(A_ORIG, A_FINAL)
    plan = Plan((W(0, "0f04"), SYNC, W(3, "40230100"), W(7, "0804"), SYNC, W(0, "3e67")))
    r = check(s, plan, ARB64, RDOS_POLICY)  # whole-site chunks: no torn views, only states
    assert not r.safe and r.witness.reason == "invalid instruction"
    # With byte-sized chunks a torn view ("3E 04": add al, imm8) breaks it even earlier.
    r1 = check(s, plan, ARB1, RDOS_POLICY)
    assert not r1.safe and r1.witness.reason == "stray effect" and r1.witness.last.states == (0, 1, 0)


def test_malformed_plans_are_refused():
    s = site(A_ORIG, A_FINAL, 0x103E)
    with pytest.raises(PlanError, match="crosses a 64-byte line"):
        check(s, Plan((W(1, "679a402301000804"),)), ARB8, RDOS_POLICY)
    with pytest.raises(PlanError, match="1, 2, 4 or 8"):
        check(s, Plan((W(3, "402301"), W(6, "000804"))), ARB8, RDOS_POLICY)
    with pytest.raises(PlanError, match="not the final"):
        check(s, Plan((W(3, "40230100"),)), ARB8, RDOS_POLICY)


def test_template_check_covers_every_selector():
    # The same torn-selector plan is unsafe as a template: some selector in the domain tears
    # into a valid one. The concrete instance shows it too.
    t = make_site("A", "far", 0x1000)
    plan = Plan((W(0, "cc"), SYNC, Write(3, t.final[3:7]), Write(7, t.final[7:9]), W(0, "3e")))
    r = check(t, plan, ARB1, RDOS_POLICY)
    assert not r.safe and r.witness.reason == "wrong call"
    inst_site, inst_plan = instance(t, plan)
    assert not check(inst_site, inst_plan, ARB1, RDOS_POLICY).safe


def test_far_jump_to_a_valid_selector_is_a_stray_effect():
    s = site(A_ORIG, A_FINAL)
    plan = Plan((W(2, "ea"), W(3, "40230100"), W(7, "0804"), W(2, "9a")))
    r = check(s, plan, ARB64, RDOS_POLICY)
    assert not r.safe and r.witness.reason == "stray effect"
