//! The balloon driver's planning against a model hypervisor (the ABI's rules for RELEASE and
//! POPULATE) and a model heap.

use std::collections::BTreeSet;

use super::*;

const PAGE: u64 = PAGE_SIZE;

fn page(i: u64) -> u64 {
    GUEST_RAM_BASE + i * PAGE
}

/// The hypervisor's side as the ABI describes it.
struct ModelHv {
    /// Pages mapped for the VM now.
    mapped: BTreeSet<u64>,
    floor_pages: u64,
    credit: u64,
    busy: BTreeSet<u64>,
    /// Length of every call's array.
    calls: Vec<usize>,
    /// Added to every answer's count, to play a hypervisor that lies.
    overstate: u64,
}

impl ModelHv {
    fn new(ram_pages: u64, floor_pages: u64, credit: u64) -> ModelHv {
        ModelHv {
            mapped: (0..ram_pages).map(page).collect(),
            floor_pages,
            credit,
            busy: BTreeSet::new(),
            calls: Vec::new(),
            overstate: 0,
        }
    }

    fn check_array(&mut self, gpas: &[u64]) {
        assert!(!gpas.is_empty() && gpas.len() <= MAX_BATCH as usize);
        assert_eq!(
            gpas.as_ptr() as usize % PAGE as usize,
            0,
            "array not page aligned"
        );
        self.calls.push(gpas.len());
    }
}

impl Calls for ModelHv {
    fn release(&mut self, gpas: &[u64]) -> (Status, u64) {
        self.check_array(gpas);
        for (done, &gpa) in gpas.iter().enumerate() {
            let status = if !gpa.is_multiple_of(PAGE) || !self.mapped.contains(&gpa) {
                Status::InvalidArgument
            } else if self.busy.contains(&gpa) {
                Status::Busy
            } else if (self.mapped.len() as u64 - 1) < self.floor_pages {
                Status::Denied
            } else {
                self.mapped.remove(&gpa);
                self.credit += 1;
                continue;
            };
            return (status, done as u64 + self.overstate);
        }
        (Status::Ok, gpas.len() as u64 + self.overstate)
    }

    fn populate(&mut self, gpas: &[u64]) -> (Status, u64) {
        self.check_array(gpas);
        for (done, &gpa) in gpas.iter().enumerate() {
            let status = if !gpa.is_multiple_of(PAGE)
                || !(WINDOW.0..WINDOW.1).contains(&gpa)
                || self.mapped.contains(&gpa)
            {
                Status::InvalidArgument
            } else if self.credit == 0 {
                Status::NoSpace
            } else {
                self.mapped.insert(gpa);
                self.credit -= 1;
                continue;
            };
            return (status, done as u64 + self.overstate);
        }
        (Status::Ok, gpas.len() as u64 + self.overstate)
    }
}

/// A heap of free runs handing out power-of-two chunks, like the buddy allocator.
#[derive(Default)]
struct ModelHeap {
    free: Vec<Run>,
    put_back: Vec<Run>,
    added: Vec<Run>,
}

impl ModelHeap {
    fn with(run: Run) -> ModelHeap {
        ModelHeap {
            free: vec![run],
            ..ModelHeap::default()
        }
    }

    fn free_pages(&self) -> u64 {
        self.free.iter().map(|r| r.pages).sum()
    }
}

impl PageSource for ModelHeap {
    fn take_pages(&mut self, max_pages: u64) -> Option<Run> {
        let run = self.free.iter_mut().find(|r| r.pages > 0)?;
        let limit = max_pages.min(run.pages);
        let pages = 1 << (63 - limit.leading_zeros());
        let chunk = Run {
            gpa: run.gpa,
            pages,
        };
        run.gpa += pages * PAGE;
        run.pages -= pages;
        Some(chunk)
    }

    fn put_back(&mut self, run: Run) {
        self.put_back.push(run);
        self.free.push(run);
    }

    fn add(&mut self, run: Run) {
        self.added.push(run);
        self.free.push(run);
    }
}

#[test]
fn giving_hands_pages_over_in_page_aligned_batches_of_at_most_512() {
    let mut hv = ModelHv::new(4096, 1024, 0);
    let mut heap = ModelHeap::with(Run {
        gpa: page(100),
        pages: 2000,
    });
    let mut driver = Driver::new(4096 * PAGE);
    let mut batch = Batch::new();
    let out = driver.give(&mut hv, &mut heap, &mut batch, 1500);
    assert_eq!(
        out,
        Outcome {
            pages: 1500,
            shortfall: None,
            ms: 0,
            call_ms: 0
        }
    );
    assert!(hv.calls.iter().all(|&n| n <= 512), "{:?}", hv.calls);
    assert_eq!(hv.calls.iter().sum::<usize>(), 1500);
    assert_eq!(hv.credit, 1500);
    assert_eq!(hv.mapped.len(), 4096 - 1500);
    // The chunks came out of one free run in order, so what was given is one run.
    assert_eq!(
        driver.given(),
        &[Run {
            gpa: page(100),
            pages: 1500
        }]
    );
    assert_eq!(driver.given_pages(), 1500);
    assert!(heap.put_back.is_empty());
    assert_eq!(heap.free_pages(), 500);
    for gpa in (100..1600).map(page) {
        assert!(!hv.mapped.contains(&gpa));
    }
}

#[test]
fn giving_stops_at_the_floor_and_puts_the_refused_pages_back() {
    // 1024 pages of RAM, a floor of 600: 424 can go.
    let mut hv = ModelHv::new(1024, 600, 0);
    let mut heap = ModelHeap::with(Run {
        gpa: page(0),
        pages: 1000,
    });
    let mut driver = Driver::new(1024 * PAGE);
    let out = driver.give(&mut hv, &mut heap, &mut Batch::new(), 1000);
    assert_eq!(out.pages, 424);
    assert_eq!(
        out.shortfall,
        Some(Shortfall::Refused {
            gpa: page(424),
            status: Status::Denied
        })
    );
    assert_eq!(hv.mapped.len(), 600);
    // The refused rest of the chunk in flight went back; the heap lost exactly what was given.
    assert_eq!(heap.put_back.len(), 1);
    assert_eq!(heap.put_back[0].gpa, page(424));
    assert_eq!(heap.free_pages(), 1000 - 424);
    assert_eq!(driver.given_pages(), 424);
}

#[test]
fn a_busy_page_stops_the_give_there_and_only_the_pages_before_it_are_gone() {
    let mut hv = ModelHv::new(2048, 16, 0);
    hv.busy.insert(page(700));
    let mut heap = ModelHeap::with(Run {
        gpa: page(0),
        pages: 2000,
    });
    let mut driver = Driver::new(2048 * PAGE);
    let out = driver.give(&mut hv, &mut heap, &mut Batch::new(), 2000);
    assert_eq!(out.pages, 700);
    assert_eq!(
        out.shortfall.map(|s| s.to_string()).as_deref(),
        Some("the hypervisor refused page 0x402bc000: Busy")
    );
    assert!(hv.mapped.contains(&page(700)) && !hv.mapped.contains(&page(699)));
    // Chunks of 512: the second one (512..1024) was cut at 700.
    assert_eq!(
        heap.put_back,
        vec![Run {
            gpa: page(700),
            pages: 324
        }]
    );
    assert_eq!(heap.free_pages(), 2000 - 700);
}

#[test]
fn giving_more_than_the_heap_has_gives_what_it_has() {
    let mut hv = ModelHv::new(2048, 16, 0);
    let mut heap = ModelHeap::with(Run {
        gpa: page(64),
        pages: 10,
    });
    let mut driver = Driver::new(2048 * PAGE);
    let out = driver.give(&mut hv, &mut heap, &mut Batch::new(), 20);
    assert_eq!(out.pages, 10);
    assert_eq!(out.shortfall, Some(Shortfall::HeapEmpty));
    // 10 = 8 + 2: two chunks, two calls.
    assert_eq!(hv.calls, vec![8, 2]);
}

#[test]
fn taking_populates_above_ram_and_adds_one_run_to_the_heap() {
    let mut hv = ModelHv::new(256, 16, 1300);
    let mut heap = ModelHeap::default();
    let mut driver = Driver::new(256 * PAGE);
    let mut batch = Batch::new();
    let out = driver.take(&mut hv, &mut heap, &mut batch, 1200);
    assert_eq!(out.pages, 1200);
    assert_eq!(out.shortfall, None);
    assert_eq!(hv.calls, vec![512, 512, 176]);
    assert_eq!(
        heap.added,
        vec![Run {
            gpa: page(256),
            pages: 1200
        }]
    );
    assert!((256..1456).all(|i| hv.mapped.contains(&page(i))));
    assert_eq!(driver.top(), page(1456));
    // A second take continues above the first.
    let out = driver.take(&mut hv, &mut heap, &mut batch, 100);
    assert_eq!(out.pages, 100);
    assert_eq!(heap.added[1].gpa, page(1456));
    assert_eq!(driver.top(), page(1556));
}

#[test]
fn taking_more_than_the_credit_gets_the_credit_and_no_space() {
    let mut hv = ModelHv::new(256, 16, 700);
    let mut heap = ModelHeap::default();
    let mut driver = Driver::new(256 * PAGE);
    let out = driver.take(&mut hv, &mut heap, &mut Batch::new(), 1000);
    assert_eq!(out.pages, 700);
    assert_eq!(
        out.shortfall,
        Some(Shortfall::Refused {
            gpa: page(956),
            status: Status::NoSpace
        })
    );
    assert_eq!(
        heap.added,
        vec![Run {
            gpa: page(256),
            pages: 700
        }]
    );
    assert_eq!(driver.top(), page(956));
    // Nothing at all: no run is added.
    let out = driver.take(&mut hv, &mut heap, &mut Batch::new(), 10);
    assert_eq!(out.pages, 0);
    assert_eq!(heap.added.len(), 1);
}

#[test]
fn taking_stops_at_the_end_of_the_window() {
    let window_pages = (WINDOW.1 - WINDOW.0) / PAGE;
    let ram_pages = window_pages - 300;
    let mut hv = ModelHv::new(0, 0, 10_000);
    let mut heap = ModelHeap::default();
    let mut driver = Driver::new(ram_pages * PAGE);
    let out = driver.take(&mut hv, &mut heap, &mut Batch::new(), 1000);
    assert_eq!(out.pages, 300);
    assert_eq!(out.shortfall, Some(Shortfall::WindowFull { top: WINDOW.1 }));
    // The one call was cut to the room left: nothing outside the window was asked for.
    assert_eq!(hv.calls, vec![300]);
    assert!(hv.mapped.iter().all(|&g| g < WINDOW.1));
}

#[test]
fn a_hypervisor_claiming_more_than_it_was_asked_is_not_believed() {
    let mut hv = ModelHv::new(2048, 1000, 600);
    hv.overstate = 1000;
    let mut heap = ModelHeap::with(Run {
        gpa: page(0),
        pages: 2000,
    });
    let mut driver = Driver::new(2048 * PAGE);
    let out = driver.give(&mut hv, &mut heap, &mut Batch::new(), 100);
    assert_eq!(out.pages, 100);
    assert_eq!(driver.given_pages(), 100);
    let out = driver.take(&mut hv, &mut heap, &mut Batch::new(), 100);
    assert_eq!(out.pages, 100);
    assert_eq!(driver.top(), page(2148));
}

#[test]
fn runs_given_apart_are_remembered_apart() {
    let mut driver = Driver::new(0);
    for (gpa, pages) in [(page(0), 2), (page(2), 3), (page(10), 1), (page(11), 0)] {
        driver.remember(Run { gpa, pages });
    }
    assert_eq!(
        driver.given(),
        &[
            Run {
                gpa: page(0),
                pages: 5
            },
            Run {
                gpa: page(10),
                pages: 1
            }
        ]
    );
}

#[test]
fn a_batch_lists_a_runs_pages_in_order_and_at_most_512() {
    let mut batch = Batch::new();
    let gpas = batch.fill(Run {
        gpa: page(3),
        pages: 600,
    });
    assert_eq!(gpas.len(), 512);
    assert_eq!(gpas[0], page(3));
    assert_eq!(gpas[511], page(514));
    assert_eq!(core::mem::align_of::<Batch>(), 4096);
    assert_eq!(core::mem::size_of::<Batch>(), 4096);
}

#[test]
fn following_steps_at_most_16_mib_and_takes_only_the_credit() {
    let step = FOLLOW_STEP_BYTES / PAGE;
    let mib = (1 << 20) / PAGE;
    assert_eq!(plan_step(144 * mib, 16 * mib, 0), Step::Give(step));
    assert_eq!(plan_step(20 * mib, 16 * mib, 0), Step::Give(4 * mib));
    assert_eq!(plan_step(16 * mib, 16 * mib, 99), Step::Reached);
    assert_eq!(plan_step(8 * mib, 136 * mib, 0), Step::Wait);
    assert_eq!(plan_step(8 * mib, 136 * mib, 3), Step::Take(3));
    assert_eq!(plan_step(8 * mib, 136 * mib, 1 << 30), Step::Take(step));
    assert_eq!(
        plan_step(130 * mib, 136 * mib, 1 << 30),
        Step::Take(6 * mib)
    );
}
