//! The cross-process examples in `client-examples/`, each run against a
//! real syncd: every one must exit 0 and print exactly the seed
//! exercise's lines, in order. (Each example checks its own property and
//! exits 1 when it did not hold; `counter` is tested in `lock.rs`.)
//!
//! A plain `cargo test` builds the examples first; `cargo test --test
//! examples` alone does not, so run `cargo build --examples` before it. A
//! binary older than its sources fails the test instead of testing old code.

mod common;

use common::{run_bounded, Syncd};

/// Runs example `name` against `syncd`; asserts exit 0 and stdout `lines`.
fn assert_example_prints(syncd: &Syncd, name: &str, lines: &[&str]) {
    let output = run_bounded(
        std::process::Command::new(common::example_bin(name))
            .env("SYNCD_ADDR", &syncd.addr)
            .env("RUST_LOG", "warn"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example {name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let printed: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        printed, lines,
        "example {name} printed other lines; stderr:\n{stderr}"
    );
}

#[test]
fn semaphore_example_keeps_at_most_3_calls_running() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "semaphore",
        &["At most 3 tasks running concurrently"],
    );
}

#[test]
fn rwlock_example_overlaps_readers_and_isolates_the_writer() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "rwlock",
        &["Multiple concurrent readers; writer gets exclusive access"],
    );
}

#[test]
fn event_example_wakes_the_worker_of_another_process() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "event",
        &[
            "Worker waiting for signal",
            "Signal sent",
            "Worker received signal and proceeding",
        ],
    );
}

#[test]
fn condition_example_hands_items_a_and_b_to_the_consumer() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "condition",
        &[
            "Consumer waiting for items",
            "Producer added item: A",
            "Consumer got: A",
            "Producer added item: B",
            "Consumer got: B",
        ],
    );
}

#[test]
fn barrier_example_lets_nobody_continue_before_all_arrive() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "barrier",
        &[
            "Worker 0 reached barrier",
            "Worker 1 reached barrier",
            "Worker 2 reached barrier",
            "Worker 0 continuing",
            "Worker 1 continuing",
            "Worker 2 continuing",
            "All workers continuing",
        ],
    );
}

/// The examples name everything they use uniquely per run: running each
/// twice against one server (an event left set, a barrier in a later
/// generation, a semaphore with holds history) still passes.
#[test]
fn examples_run_twice_against_one_server() {
    let syncd = Syncd::start();
    for _ in 0..2 {
        assert_example_prints(
            &syncd,
            "event",
            &[
                "Worker waiting for signal",
                "Signal sent",
                "Worker received signal and proceeding",
            ],
        );
        assert_example_prints(
            &syncd,
            "semaphore",
            &["At most 3 tasks running concurrently"],
        );
    }
}

#[test]
fn bounded_queue_example_holds_the_producer_back_while_3_items_wait() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "bounded_queue",
        &["Producer done", "Consumer done", "All 10 items processed"],
    );
}

#[test]
fn priority_queue_example_serves_by_priority_then_put_order() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "priority_queue",
        &["Items dequeued by priority: CRITICAL, HIGH, NORMAL, LOW"],
    );
}

#[test]
fn pool_example_keeps_2_out_at_most_and_replaces_stale_resources() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "pool",
        &["Pool managed 4 requests with health checks"],
    );
}

#[test]
fn token_bucket_example_passes_a_burst_of_10_then_5_per_second() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "token_bucket",
        &["All requests completed — rate limited to 5/s with burst of 10"],
    );
}

#[test]
fn circuit_breaker_example_opens_for_every_process_and_recovers_with_one_probe() {
    let syncd = Syncd::start();
    assert_example_prints(
        &syncd,
        "circuit_breaker",
        &[
            "Success: ok",
            "Circuit OPEN after 3 failures",
            "Circuit HALF-OPEN after timeout",
            "Success after recovery",
        ],
    );
}
