//! Rule 10 (docs/concepts.md): a join runs once every event it waits for arrived, keeps the
//! ones that arrived in the journal meanwhile, and leaves an abort nothing to undo of its own.
//!
//! A trip saga: trips starts with `TripRequested`; flights and hotels book in parallel; payments
//! joins `FlightBooked` and `HotelBooked` and charges their sum (`PaymentCharged`); trips
//! confirms (`TripConfirmed`, terminal). Flights and hotels each wait at a gate the test
//! opens, so the test decides which booking arrives first and looks at the join while it
//! waits for the other.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use choreo::journal::CompensationState;
use choreo::{
    AbortReason, CompensationOrder, Context, Envelope, Event, EventId, HandlerError,
    RunningService, Saga, SagaData, SagaId, SagaKind, SagaLog, SagaOutcome, SagaRecord, SagaStart,
    SagaStatus, Service, Step, StepResult, Store,
};
use common::{
    compensated, ev, settled_in, sorted, Backend, Harness, StoreKind, ABORTED, COMPENSATED,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

scenarios! {
    memory: [
        in_reverse_order_the_last_step_is_undone_first_and_the_first_last,
        in_reverse_order_a_branch_with_nothing_to_undo_holds_nobody_up,
        in_reverse_order_a_participant_with_nothing_to_undo_holds_nobody_up,
        in_reverse_order_a_participant_down_during_the_abort_is_waited_for,
        a_join_runs_once_after_both_branches,
        a_join_takes_its_events_in_either_order,
        a_join_runs_once_and_the_first_event_of_a_type_counts,
        a_branch_rejecting_after_the_other_succeeded_compensates_it,
    ];
    kafka: [
        in_reverse_order_the_last_step_is_undone_first_and_the_first_last,
        in_reverse_order_a_branch_with_nothing_to_undo_holds_nobody_up,
        in_reverse_order_a_participant_with_nothing_to_undo_holds_nobody_up,
        in_reverse_order_a_participant_down_during_the_abort_is_waited_for,
        a_join_runs_once_after_both_branches,
        a_join_takes_its_events_in_either_order,
        a_branch_rejecting_after_the_other_succeeded_compensates_it,
    ];
    rabbitmq: [
        in_reverse_order_the_last_step_is_undone_first_and_the_first_last,
        in_reverse_order_a_branch_with_nothing_to_undo_holds_nobody_up,
        in_reverse_order_a_participant_with_nothing_to_undo_holds_nobody_up,
        in_reverse_order_a_participant_down_during_the_abort_is_waited_for,
        a_join_runs_once_after_both_branches,
        a_join_takes_its_events_in_either_order,
        a_branch_rejecting_after_the_other_succeeded_compensates_it,
    ];
    memory_sqlite: [a_join_waits_across_a_restart];
    kafka_sqlite: [a_join_waits_across_a_restart];
    rabbitmq_sqlite: [a_join_waits_across_a_restart];
}

const TOPIC: &str = "trips.saga";
const SERVICES: [&str; 4] = ["trips", "flights", "hotels", "payments"];
const FLIGHT_CENTS: u64 = 30_000;
const HOTEL_CENTS: u64 = 20_000;
/// A card token payments declines.
const DECLINED_CARD: &str = "tok_declined";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "trips.TripRequested.v1")]
struct TripRequested {
    trip: u64,
    destination: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "flights.FlightBooked.v1")]
struct FlightBooked {
    trip: u64,
    flight: String,
    price_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "hotels.HotelBooked.v1")]
struct HotelBooked {
    trip: u64,
    hotel: String,
    price_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "payments.PaymentCharged.v1")]
struct PaymentCharged {
    trip: u64,
    flight: String,
    hotel: String,
    amount_cents: u64,
    card_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "trips.TripConfirmed.v1")]
struct TripConfirmed {
    trip: u64,
}

/// What the four services did, in order: `(service, action, trip)`.
type Effects = Arc<Mutex<Vec<(&'static str, &'static str, u64)>>>;

fn did(effects: &Effects, service: &'static str, action: &'static str, trip: u64) {
    effects.lock().unwrap().push((service, action, trip));
}

fn trip_saga(backend: Backend, order: CompensationOrder) -> Saga {
    // Long enough for a service to restart (and rejoin its group) while the saga waits.
    Saga::new(TOPIC)
        .timeout(backend.units(40))
        .completes_on::<TripConfirmed>()
        .compensation_order(order)
}

/// The trip saga's four services on a harness's transport, with stores of their own.
struct Travel {
    running: HashMap<&'static str, RunningService>,
    log: SagaLog,
    effects: Effects,
    flights_open: watch::Sender<bool>,
    hotels_open: watch::Sender<bool>,
    stores: HashMap<&'static str, Arc<dyn Store>>,
    directory: Option<std::path::PathBuf>,
    order: CompensationOrder,
    /// Declared last, so the broker outlives every client dropped before it.
    h: Harness,
}

impl Travel {
    async fn start(backend: Backend) -> Self {
        Self::start_in(backend, CompensationOrder::Parallel).await
    }

    /// The four services, compensating an abort in `order`.
    async fn start_in(backend: Backend, order: CompensationOrder) -> Self {
        let h = Harness::prepare(backend).await;
        let log = SagaLog::start(
            Arc::clone(&h.transport),
            &trip_saga(backend, order),
            "trip-log",
        )
        .await
        .unwrap();
        let directory = (backend.store != StoreKind::Memory).then(|| {
            let directory =
                std::env::temp_dir().join(format!("choreo-travel-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&directory).unwrap();
            directory
        });
        let mut travel = Self {
            h,
            log,
            effects: Effects::default(),
            flights_open: watch::channel(true).0,
            hotels_open: watch::channel(false).0,
            stores: HashMap::new(),
            directory,
            order,
            running: HashMap::new(),
        };
        for service in SERVICES {
            travel.start_service(service).await;
        }
        travel
    }

    /// Starts (or restarts) `name` on its store, opened again as a new process would.
    async fn start_service(&mut self, name: &'static str) {
        let store: Arc<dyn Store> = match &self.directory {
            None => Arc::clone(
                self.stores
                    .entry(name)
                    .or_insert_with(|| Arc::new(choreo::MemoryStore::new())),
            ),
            Some(directory) => {
                let path = directory.join(format!("{name}.db"));
                choreo::open_store(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap()
            }
        };
        self.stores.insert(name, Arc::clone(&store));
        let builder = Service::builder(name, &trip_saga(self.h.backend, self.order))
            .store(store)
            .clock(Arc::new(self.h.clock.clone()))
            .options(common::test_options(self.h.backend));
        let effects = Arc::clone(&self.effects);
        let undo = Arc::clone(&self.effects);
        let service = match name {
            "trips" => builder
                .initiates::<TripRequested>()
                .compensate(move |trip: TripRequested, _: Context| {
                    did(&undo, "trips", "cancel_trip", trip.trip);
                    async { Ok(()) }
                })
                .step(move |charged: PaymentCharged, cx: Context| {
                    let declined = cx.saga_data().get::<bool>("trip_declined");
                    if !matches!(declined, Ok(Some(true))) {
                        did(&effects, "trips", "confirm_trip", charged.trip);
                    }
                    async move {
                        match declined.map_err(HandlerError::permanent)? {
                            Some(true) => Ok(Step::reject("the traveller declined the price")),
                            _ => Ok(Step::done(TripConfirmed { trip: charged.trip })),
                        }
                    }
                }),
            "flights" => {
                let open = self.flights_open.subscribe();
                builder
                    .step(move |trip: TripRequested, _: Context| {
                        let (effects, mut open) = (Arc::clone(&effects), open.clone());
                        async move { book_flight(trip, &effects, &mut open).await }
                    })
                    .compensate(move |flight: FlightBooked, _: Context| {
                        did(&undo, "flights", "cancel_flight", flight.trip);
                        async { Ok(()) }
                    })
            }
            "hotels" => {
                let open = self.hotels_open.subscribe();
                builder
                    .step(move |trip: TripRequested, _: Context| {
                        let (effects, mut open) = (Arc::clone(&effects), open.clone());
                        async move { book_hotel(trip, &effects, &mut open).await }
                    })
                    .compensate(move |hotel: HotelBooked, _: Context| {
                        did(&undo, "hotels", "cancel_hotel", hotel.trip);
                        async { Ok(()) }
                    })
            }
            "payments" => builder
                .join(
                    move |(flight, hotel): (FlightBooked, HotelBooked), cx: Context| {
                        let card = cx.saga_data().get::<String>("card_token");
                        if !matches!(card.as_ref().map(Option::as_deref), Ok(Some(DECLINED_CARD))) {
                            did(&effects, "payments", "charge", flight.trip);
                        }
                        async move { charge(flight, hotel, cx) }
                    },
                )
                .compensate(move |charged: PaymentCharged, _: Context| {
                    did(&undo, "payments", "refund", charged.trip);
                    async { Ok(()) }
                }),
            other => unreachable!("no service {other}"),
        }
        .build()
        .unwrap();
        let running = service.run(Arc::clone(&self.h.transport)).await.unwrap();
        self.running.insert(name, running);
    }

    /// Requests trip `trip` to `destination`, paying with card token `tok_<trip>`.
    async fn request(&self, trip: u64, destination: &str) -> SagaId {
        let token = SagaData::new()
            .with("card_token", &format!("tok_{trip}"))
            .unwrap();
        self.request_with(trip, destination, token).await
    }

    /// Requests trip `trip` to `destination` with saga data `data`.
    async fn request_with(&self, trip: u64, destination: &str, data: SagaData) -> SagaId {
        self.running["trips"]
            .start_saga_with(
                TripRequested {
                    trip,
                    destination: destination.to_owned(),
                },
                SagaStart::new().data(data),
            )
            .await
            .unwrap()
    }

    /// Waits until payments' join keeps the saga's `E`, checks that it keeps nothing else and
    /// has not run, and returns the event.
    async fn join_waits_with<E: Event>(&self, saga: SagaId) -> Envelope {
        let published = self.published::<E>(saga).await;
        self.wait_until_handled("payments", &published).await;
        let record = self.record("payments", saga).await.unwrap();
        assert_eq!(kept(&record), [&published]);
        assert!(own_steps(&record).is_empty());
        assert!(!self
            .effects()
            .iter()
            .any(|(_, action, _)| *action == "charge"));
        published
    }

    /// Waits for the saga's first `E` on the topic, and returns it.
    async fn published<E: Event>(&self, saga: SagaId) -> Envelope {
        self.log
            .published::<E>(saga, self.h.units(30))
            .await
            .unwrap();
        self.log
            .events(saga)
            .into_iter()
            .find(|event| event.event_type == E::TYPE)
            .unwrap()
    }

    /// Waits until `service` has `event` in its inbox.
    async fn wait_until_handled(&self, service: &str, event: &Envelope) {
        self.wait_until_stored(service, event, |loaded| loaded.handled)
            .await;
    }

    /// Waits until `service`'s record of the saga keeps `event`.
    async fn wait_until_kept(&self, service: &str, event: &Envelope) {
        self.wait_until_stored(service, event, |loaded| {
            loaded
                .record
                .is_some_and(|record| record.steps.iter().any(|step| step.output.id == event.id))
        })
        .await;
    }

    /// Waits until what `service`'s store holds of `event`'s saga satisfies `holds`.
    async fn wait_until_stored(
        &self,
        service: &str,
        event: &Envelope,
        holds: impl Fn(choreo::store::Loaded) -> bool,
    ) {
        let started = tokio::time::Instant::now();
        while !holds(
            self.stores[service]
                .load(service, event.saga_id, Some(event.id))
                .await
                .unwrap(),
        ) {
            assert!(
                started.elapsed() < self.h.units(30),
                "{service} never handled {}",
                event.event_type
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn open_flights(&self, open: bool) {
        self.flights_open.send_replace(open);
    }

    fn open_hotels(&self) {
        self.hotels_open.send_replace(true);
    }

    async fn outcome(&self, saga: SagaId) -> SagaOutcome {
        self.log
            .wait_for_outcome(saga, &SERVICES, self.h.units(200))
            .await
            .unwrap_or_else(|not_ended| panic!("{not_ended}"))
    }

    /// Waits until every service's record of the saga is finished (completed, or aborted
    /// and acknowledged): the topic shows an outcome before the last handlings commit.
    async fn settled(&self, saga: SagaId) {
        settled_in(saga, &SERVICES, self.h.units(100), async |service, saga| {
            self.record(service, saga).await
        })
        .await;
    }

    async fn record(&self, service: &str, saga: SagaId) -> Option<SagaRecord> {
        self.stores[service]
            .load(service, saga, None)
            .await
            .unwrap()
            .record
    }

    fn effects(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.effects.lock().unwrap().clone()
    }
}

impl Drop for Travel {
    fn drop(&mut self) {
        self.running.clear();
        self.stores.clear();
        if let Some(directory) = &self.directory {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}

async fn book_flight(
    trip: TripRequested,
    effects: &Effects,
    open: &mut watch::Receiver<bool>,
) -> StepResult<FlightBooked> {
    open.wait_for(|open| *open)
        .await
        .map_err(HandlerError::transient)?;
    did(effects, "flights", "book_flight", trip.trip);
    Ok(Step::done(FlightBooked {
        trip: trip.trip,
        flight: format!("CH{}", 100 + trip.trip),
        price_cents: FLIGHT_CENTS,
    }))
}

async fn book_hotel(
    trip: TripRequested,
    effects: &Effects,
    open: &mut watch::Receiver<bool>,
) -> StepResult<HotelBooked> {
    open.wait_for(|open| *open)
        .await
        .map_err(HandlerError::transient)?;
    if trip.destination == "nowhere" {
        return Ok(Step::reject("no room left"));
    }
    did(effects, "hotels", "book_hotel", trip.trip);
    Ok(Step::done(HotelBooked {
        trip: trip.trip,
        hotel: format!("Grand {}", trip.destination),
        price_cents: HOTEL_CENTS,
    }))
}

/// Charges the flight and the hotel together, with the card the trip started with.
fn charge(flight: FlightBooked, hotel: HotelBooked, cx: Context) -> StepResult<PaymentCharged> {
    let card_token = cx
        .saga_data()
        .get::<String>("card_token")
        .map_err(HandlerError::permanent)?
        .ok_or_else(|| HandlerError::permanent("no card token"))?;
    if card_token == DECLINED_CARD {
        return Ok(Step::reject("card declined"));
    }
    Ok(Step::done(PaymentCharged {
        trip: flight.trip,
        flight: flight.flight,
        hotel: hotel.hotel,
        amount_cents: flight.price_cents + hotel.price_cents,
        card_token,
    }))
}

/// The events a record keeps for a join.
fn kept(record: &SagaRecord) -> Vec<&Envelope> {
    record
        .steps
        .iter()
        .filter(|step| step.is_received())
        .map(|step| &*step.output)
        .collect()
}

fn own_steps(record: &SagaRecord) -> Vec<&str> {
    record
        .steps
        .iter()
        .filter(|step| !step.is_received())
        .map(|step| step.output.event_type.as_str())
        .collect()
}

/// Trip 1 to Lisbon completed, the join's events having arrived `first` then `second`: the
/// flow, the charge, the effects, and every participant's record.
async fn completed_as_joined(t: &Travel, saga: SagaId, first: &Envelope, second: &Envelope) {
    assert_eq!(t.outcome(saga).await, SagaOutcome::Completed);
    t.settled(saga).await;
    let events = t.log.events(saga);
    let source = |event: &Envelope| ev(&event.source, &event.event_type);
    assert_eq!(
        t.log.flow(saga),
        [
            ev("trips", TripRequested::TYPE),
            source(first),
            source(second),
            ev("payments", PaymentCharged::TYPE),
            ev("trips", TripConfirmed::TYPE),
        ]
    );
    // The join's event is caused by the event that arrived last, and names the other.
    assert_eq!(events[3].causation_id, Some(second.id));
    assert_eq!(events[3].joined_causes, [first.id]);
    let charged: PaymentCharged = common::data(&events[3]);
    assert_eq!(
        charged,
        PaymentCharged {
            trip: 1,
            flight: "CH101".into(),
            hotel: "Grand Lisbon".into(),
            amount_cents: FLIGHT_CENTS + HOTEL_CENTS,
            card_token: "tok_1".into(),
        }
    );
    let booking = |event: &Envelope| match event.source.as_str() {
        "flights" => ("flights", "book_flight", 1),
        _ => ("hotels", "book_hotel", 1),
    };
    assert_eq!(
        t.effects(),
        [
            booking(first),
            booking(second),
            ("payments", "charge", 1),
            ("trips", "confirm_trip", 1),
        ]
    );
    let payments = t.record("payments", saga).await.unwrap();
    assert_eq!(payments.status, SagaStatus::Completed);
    assert_eq!(kept(&payments), [first, second]);
    assert_eq!(own_steps(&payments), [PaymentCharged::TYPE]);
    for (service, steps) in [
        ("trips", vec![TripRequested::TYPE, TripConfirmed::TYPE]),
        ("flights", vec![FlightBooked::TYPE]),
        ("hotels", vec![HotelBooked::TYPE]),
    ] {
        let record = t.record(service, saga).await.unwrap();
        assert_eq!(record.status, SagaStatus::Completed, "{service}");
        assert_eq!(own_steps(&record), steps, "{service}");
        assert!(kept(&record).is_empty(), "{service}");
    }
}

async fn a_join_runs_once_after_both_branches(backend: Backend) {
    let t = Travel::start(backend).await;
    let saga = t.request(1, "Lisbon").await;

    let flight = t.join_waits_with::<FlightBooked>(saga).await;
    t.open_hotels();
    let hotel = t.published::<HotelBooked>(saga).await;
    completed_as_joined(&t, saga, &flight, &hotel).await;
}

async fn a_join_takes_its_events_in_either_order(backend: Backend) {
    let t = Travel::start(backend).await;
    t.open_flights(false);
    t.open_hotels();
    let saga = t.request(1, "Lisbon").await;

    let hotel = t.join_waits_with::<HotelBooked>(saga).await;
    t.open_flights(true);
    let flight = t.published::<FlightBooked>(saga).await;
    // The join's handler still gets the flight first, as its tuple lists it.
    completed_as_joined(&t, saga, &hotel, &flight).await;
}

async fn a_join_waits_across_a_restart(backend: Backend) {
    let mut t = Travel::start(backend).await;
    let saga = t.request(1, "Lisbon").await;

    let flight = t.join_waits_with::<FlightBooked>(saga).await;
    t.running.remove("payments").unwrap().kill();
    t.start_service("payments").await;
    let reopened = t.record("payments", saga).await.unwrap();
    assert_eq!(kept(&reopened), [&flight]);
    t.open_hotels();
    // The charge names the flight, which only the reopened journal still had.
    let hotel = t.published::<HotelBooked>(saga).await;
    completed_as_joined(&t, saga, &flight, &hotel).await;
}

async fn a_join_runs_once_and_the_first_event_of_a_type_counts(backend: Backend) {
    let t = Travel::start(backend).await;
    let saga = t.request(1, "Lisbon").await;
    let flight = t.join_waits_with::<FlightBooked>(saga).await;

    // A second flight of the same saga, while the join waits: ignored.
    let mut rebooked = flight.clone();
    rebooked.id = EventId::new();
    rebooked.data = serde_json::value::to_raw_value(&FlightBooked {
        trip: 1,
        flight: "CH999".into(),
        price_cents: 99_999,
    })
    .unwrap();
    t.h.transport
        .publish(TOPIC, rebooked.clone())
        .await
        .unwrap();
    t.wait_until_handled("payments", &rebooked).await;
    assert_eq!(kept(&t.record("payments", saga).await.unwrap()), [&flight]);

    t.open_hotels();
    let hotel = t.published::<HotelBooked>(saga).await;
    assert_eq!(t.outcome(saga).await, SagaOutcome::Completed);
    t.settled(saga).await;
    let charged: PaymentCharged = t.log.published(saga, t.h.units(1)).await.unwrap();
    assert_eq!(charged.flight, "CH101");
    assert_eq!(charged.amount_cents, FLIGHT_CENTS + HOTEL_CENTS);

    // After the join ran: the first flight and the hotel again (duplicates), and yet another
    // flight.
    let mut another = flight.clone();
    another.id = EventId::new();
    for late in [flight.clone(), hotel.clone(), another] {
        t.h.transport.publish(TOPIC, late.clone()).await.unwrap();
        t.wait_until_handled("payments", &late).await;
    }
    let charges = t
        .effects()
        .into_iter()
        .filter(|(_, action, _)| *action == "charge")
        .count();
    assert_eq!(charges, 1);
    let payments = t.record("payments", saga).await.unwrap();
    assert_eq!(own_steps(&payments), [PaymentCharged::TYPE]);
    assert_eq!(kept(&payments), [&flight, &hotel]);
    let charged_events = t
        .log
        .flow(saga)
        .into_iter()
        .filter(|(_, event_type)| event_type == PaymentCharged::TYPE)
        .count();
    assert_eq!(charged_events, 1);
}

async fn a_branch_rejecting_after_the_other_succeeded_compensates_it(backend: Backend) {
    let t = Travel::start(backend).await;
    branch_rejecting_after_the_other_succeeded(&t).await;
}

/// With the reverse order, the rejecting branch and the join have nothing to undo and hold
/// nobody up; trips, whose request the flight booking descends from, cancels after flights.
async fn in_reverse_order_a_branch_with_nothing_to_undo_holds_nobody_up(backend: Backend) {
    let t = Travel::start_in(backend, CompensationOrder::Reverse).await;
    let saga = branch_rejecting_after_the_other_succeeded(&t).await;
    let acks = acknowledgers(&t, saga);
    let position = |service: &str| acks.iter().position(|ack| ack == service).unwrap();
    assert!(position("flights") < position("trips"), "{acks:?}");
    assert_eq!(
        effects_of(&t, 1),
        [
            ("flights", "book_flight"),
            ("flights", "cancel_flight"),
            ("trips", "cancel_trip"),
        ]
    );
}

/// Trip 1 where hotels finds no room once the flight is booked and payments' join keeps it:
/// the flow, the acknowledgements' contents, the effects and every record.
async fn branch_rejecting_after_the_other_succeeded(t: &Travel) -> SagaId {
    let saga = t.request(1, "nowhere").await;

    t.join_waits_with::<FlightBooked>(saga).await;
    t.open_hotels();
    assert_eq!(t.outcome(saga).await, compensated(AbortReason::Rejected));
    t.settled(saga).await;
    let flow = t.log.flow(saga);
    assert_eq!(
        flow[..3],
        [
            ev("trips", TripRequested::TYPE),
            ev("flights", FlightBooked::TYPE),
            ev("hotels", ABORTED),
        ]
    );
    assert_eq!(
        sorted(flow[3..].to_vec()),
        sorted(SERVICES.map(|service| ev(service, COMPENSATED)).to_vec())
    );
    let undone = common::acknowledgements_in(&t.log.events(saga));
    for (service, compensated) in [
        ("trips", vec![TripRequested::TYPE]),
        ("flights", vec![FlightBooked::TYPE]),
        ("hotels", vec![]),
        ("payments", vec![]),
    ] {
        assert_eq!(undone[service].compensated, compensated, "{service}");
        assert!(undone[service].failed.is_empty(), "{service}");
    }
    assert_eq!(
        sorted(t.effects()),
        sorted(vec![
            ("flights", "book_flight", 1),
            ("flights", "cancel_flight", 1),
            ("trips", "cancel_trip", 1),
        ])
    );
    let aborted = SagaStatus::Aborted {
        reason: AbortReason::Rejected,
    };
    // Payments kept the flight for its join and had nothing of its own to undo.
    let payments = t.record("payments", saga).await.unwrap();
    assert_eq!(payments.status, aborted);
    assert_eq!(kept(&payments).len(), 1);
    assert_eq!(kept(&payments)[0].event_type, FlightBooked::TYPE);
    assert_eq!(
        payments.steps[0].compensation,
        CompensationState::NotRequired
    );
    assert!(own_steps(&payments).is_empty());
    let flights = t.record("flights", saga).await.unwrap();
    assert_eq!(flights.status, aborted);
    assert_eq!(
        flights.steps[0].compensation,
        CompensationState::Compensated
    );
    let hotels = t.record("hotels", saga).await.unwrap();
    assert_eq!(hotels.status, aborted);
    assert!(hotels.steps.is_empty());
    assert_eq!(
        t.record("trips", saga).await.unwrap().steps[0].compensation,
        CompensationState::Compensated
    );
    saga
}

/// The saga data of a trip the traveller declines once it is charged.
fn declined_once_charged(trip: u64) -> SagaData {
    SagaData::new()
        .with("card_token", &format!("tok_{trip}"))
        .unwrap()
        .with("trip_declined", &true)
        .unwrap()
}

/// The saga's acknowledgements, in the order the topic shows them.
fn acknowledgers(t: &Travel, saga: SagaId) -> Vec<String> {
    t.log
        .events(saga)
        .into_iter()
        .filter(|event| event.kind == SagaKind::Compensated)
        .map(|event| event.source)
        .collect()
}

/// What `trip`'s services did, `(service, action)`, in order.
fn effects_of(t: &Travel, trip: u64) -> Vec<(&'static str, &'static str)> {
    t.effects()
        .into_iter()
        .filter(|(_, _, of)| *of == trip)
        .map(|(service, action, _)| (service, action))
        .collect()
}

/// Types of the events `service` kept for the saga, sorted.
async fn kept_types(t: &Travel, service: &str, saga: SagaId) -> Vec<String> {
    let record = t.record(service, saga).await.unwrap();
    sorted(
        kept(&record)
            .into_iter()
            .map(|event| format!("{} from {}", event.event_type, event.source))
            .collect(),
    )
}

/// Each service's record is aborted for `reason`, acknowledged, and its own steps undone.
async fn all_undone(t: &Travel, saga: SagaId) {
    for service in SERVICES {
        let record = t.record(service, saga).await.unwrap();
        assert_eq!(
            (record.status, record.compensation_acknowledged),
            (
                SagaStatus::Aborted {
                    reason: AbortReason::Rejected
                },
                true
            ),
            "{service}"
        );
        for step in record.steps.iter().filter(|step| !step.is_received()) {
            assert_eq!(
                step.compensation,
                CompensationState::Compensated,
                "{service}"
            );
        }
    }
}

/// With the reverse compensation order, trips the traveller declines once charged are undone
/// from the last step back: payments refunds first; flights and hotels cancel once payments
/// acknowledged (the charge joined both bookings); trips cancels last, once all three did.
/// The acknowledgements on the topic and the effects show that order in every saga.
async fn in_reverse_order_the_last_step_is_undone_first_and_the_first_last(backend: Backend) {
    let t = Travel::start_in(backend, CompensationOrder::Reverse).await;
    t.open_hotels();
    let trips: u64 = if backend.paused() { 20 } else { 5 };
    let mut sagas = Vec::new();
    for trip in 1..=trips {
        let data = declined_once_charged(trip);
        sagas.push((trip, t.request_with(trip, "Lisbon", data).await));
    }
    for (trip, saga) in sagas {
        assert_eq!(t.outcome(saga).await, compensated(AbortReason::Rejected));
        t.settled(saga).await;
        let flow = t.log.flow(saga);
        assert_eq!(flow[0], ev("trips", TripRequested::TYPE));
        assert_eq!(
            sorted(flow[1..3].to_vec()),
            [
                ev("flights", FlightBooked::TYPE),
                ev("hotels", HotelBooked::TYPE)
            ]
        );
        assert_eq!(
            flow[3..5],
            [ev("payments", PaymentCharged::TYPE), ev("trips", ABORTED)]
        );
        let acks = acknowledgers(&t, saga);
        assert_eq!(acks.len(), 4, "{acks:?}");
        assert_eq!(acks[0], "payments", "trip {trip}: {acks:?}");
        assert_eq!(sorted(acks[1..3].to_vec()), ["flights", "hotels"]);
        assert_eq!(acks[3], "trips", "trip {trip}: {acks:?}");

        let effects = effects_of(&t, trip);
        assert_eq!(
            sorted(effects[..2].to_vec()),
            [("flights", "book_flight"), ("hotels", "book_hotel")]
        );
        assert_eq!(
            effects[2..4],
            [("payments", "charge"), ("payments", "refund")]
        );
        assert_eq!(
            sorted(effects[4..6].to_vec()),
            [("flights", "cancel_flight"), ("hotels", "cancel_hotel")]
        );
        assert_eq!(effects[6..], [("trips", "cancel_trip")]);
        all_undone(&t, saga).await;

        // What each kept to know whom to wait for: the events descending from its steps,
        // and the acknowledgements that arrived while it waited.
        let charged = format!("{} from payments", PaymentCharged::TYPE);
        let acked_by = |service: &str| format!("{COMPENSATED} from {service}");
        for branch in ["flights", "hotels"] {
            assert_eq!(
                kept_types(&t, branch, saga).await,
                sorted(vec![charged.clone(), acked_by("payments")]),
                "{branch}"
            );
        }
        let trips_kept = kept_types(&t, "trips", saga).await;
        for expected in [
            format!("{} from flights", FlightBooked::TYPE),
            format!("{} from hotels", HotelBooked::TYPE),
            // Its own step rejected the charge, so it keeps it as the others' work.
            charged.clone(),
            acked_by("payments"),
            acked_by("flights"),
            acked_by("hotels"),
        ] {
            assert!(trips_kept.contains(&expected), "{expected}: {trips_kept:?}");
        }
    }
}

/// With the reverse order, a participant with nothing to undo does not hold anyone up:
/// payments declines the card (the join's step rejects, so it has no step of its own), and
/// flights and hotels cancel at once; trips cancels after both. Nobody waits for payments'
/// acknowledgement, so it may come before or after any of theirs.
async fn in_reverse_order_a_participant_with_nothing_to_undo_holds_nobody_up(backend: Backend) {
    let t = Travel::start_in(backend, CompensationOrder::Reverse).await;
    t.open_hotels();
    let declined_card = SagaData::new().with("card_token", DECLINED_CARD).unwrap();
    let saga = t.request_with(1, "Lisbon", declined_card).await;

    assert_eq!(t.outcome(saga).await, compensated(AbortReason::Rejected));
    t.settled(saga).await;
    let flow = t.log.flow(saga);
    assert_eq!(flow[3], ev("payments", ABORTED));
    let acks = acknowledgers(&t, saga);
    assert_eq!(
        sorted(acks.clone()),
        ["flights", "hotels", "payments", "trips"]
    );
    let position = |service: &str| acks.iter().position(|ack| ack == service).unwrap();
    assert!(position("flights") < position("trips"), "{acks:?}");
    assert!(position("hotels") < position("trips"), "{acks:?}");
    let undone = common::acknowledgements_in(&t.log.events(saga));
    assert!(undone["payments"].compensated.is_empty());
    let effects = effects_of(&t, 1);
    assert_eq!(
        sorted(effects[2..4].to_vec()),
        [("flights", "cancel_flight"), ("hotels", "cancel_hotel")]
    );
    assert_eq!(effects[4..], [("trips", "cancel_trip")]);
    assert!(!effects.contains(&("payments", "charge")));
    all_undone(&t, saga).await;
}

/// With the reverse order, a participant that is down when the saga aborts holds up only
/// those before it: flights is killed once it booked; payments refunds and hotels cancels,
/// but trips waits, having kept their acknowledgements, until flights is back, cancels from
/// its store and acknowledges.
async fn in_reverse_order_a_participant_down_during_the_abort_is_waited_for(backend: Backend) {
    let mut t = Travel::start_in(backend, CompensationOrder::Reverse).await;
    let saga = t.request_with(1, "Lisbon", declined_once_charged(1)).await;
    let flight = t.join_waits_with::<FlightBooked>(saga).await;
    t.wait_until_handled("flights", &t.published::<TripRequested>(saga).await)
        .await;
    t.running.remove("flights").unwrap().kill();
    t.open_hotels();

    // Payments and hotels undo their steps; trips keeps their acknowledgements and waits.
    let two_acks = t.log.wait_until(saga, |events| {
        events
            .iter()
            .filter(|event| event.kind == SagaKind::Compensated)
            .count()
            >= 2
    });
    tokio::time::timeout(t.h.units(100), two_acks)
        .await
        .unwrap_or_else(|_| panic!("no acknowledgements:\n{}", t.log.timeline(saga)));
    assert_eq!(acknowledgers(&t, saga), ["payments", "hotels"]);
    let acks = t
        .log
        .events(saga)
        .into_iter()
        .filter(|event| event.kind == SagaKind::Compensated)
        .collect::<Vec<_>>();
    for ack in &acks {
        t.wait_until_kept("trips", ack).await;
    }
    let trips = t.record("trips", saga).await.unwrap();
    assert!(!trips.compensation_acknowledged);
    assert_eq!(trips.steps[0].compensation, CompensationState::Pending);
    assert!(!effects_of(&t, 1).contains(&("trips", "cancel_trip")));

    t.start_service("flights").await;
    assert_eq!(t.outcome(saga).await, compensated(AbortReason::Rejected));
    t.settled(saga).await;
    assert_eq!(
        acknowledgers(&t, saga),
        ["payments", "hotels", "flights", "trips"]
    );
    assert_eq!(
        effects_of(&t, 1),
        [
            ("flights", "book_flight"),
            ("hotels", "book_hotel"),
            ("payments", "charge"),
            ("payments", "refund"),
            ("hotels", "cancel_hotel"),
            ("flights", "cancel_flight"),
            ("trips", "cancel_trip"),
        ]
    );
    assert_eq!(t.log.events(saga)[1].id, flight.id);
    all_undone(&t, saga).await;
}
